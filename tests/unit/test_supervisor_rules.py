"""``serve --workers``: how many workers, and when a dead one is started again (pure rules)."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.entrypoints.supervisor import RestartPolicy, worker_count
from app.settings import Settings

PG = "postgresql+asyncpg://postgres@127.0.0.1/jt"
MONGO = "mongodb://127.0.0.1/jt"
SQLITE = "sqlite+aiosqlite:////tmp/jt.db"


def _settings(log_url: str, sql_url: str, workers: int | None = None) -> Settings:
    return Settings(log_url=log_url, sql_url=sql_url, workers=workers)


@pytest.mark.parametrize("log_url", [PG, MONGO])
def test_the_default_is_the_machines_cores_when_both_stores_take_several_writers(
    log_url: str,
) -> None:
    assert worker_count(_settings(log_url, PG), None) == (os.cpu_count() or 1)


@pytest.mark.parametrize(("log_url", "sql_url"), [(SQLITE, PG), (PG, SQLITE), (SQLITE, SQLITE)])
def test_the_default_is_one_worker_with_sqlite(log_url: str, sql_url: str) -> None:
    assert worker_count(_settings(log_url, sql_url), None) == 1
    assert worker_count(_settings(log_url, sql_url), 1) == 1


def test_the_option_wins_over_the_environment() -> None:
    assert worker_count(_settings(MONGO, PG, workers=3), None) == 3
    assert worker_count(_settings(MONGO, PG, workers=3), 2) == 2


@pytest.mark.parametrize(
    ("log_url", "sql_url", "named"),
    [
        (SQLITE, PG, "SQLite (one writer) holds the event log:"),
        (PG, SQLITE, "SQLite (one writer) holds the projections:"),
        (SQLITE, SQLITE, "SQLite (one writer) holds the event log and the projections:"),
    ],
)
def test_several_workers_on_sqlite_are_refused_naming_the_store(
    log_url: str, sql_url: str, named: str
) -> None:
    for settings, requested in (
        (_settings(log_url, sql_url), 2),
        (_settings(log_url, sql_url, 2), None),
    ):
        with pytest.raises(
            ValueError, match="2 workers need stores that take several writers"
        ) as e:
            worker_count(settings, requested)
        assert named in str(e.value) and "\n" not in str(e.value)


def test_a_worker_that_ran_long_enough_is_started_again_at_once() -> None:
    assert RestartPolicy().delay(0) == 0.0


def test_early_exits_back_off_then_give_up() -> None:
    policy = RestartPolicy(first_delay_s=0.5, max_delay_s=3.0, max_early_exits=5)
    assert [policy.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, None]


@given(
    first=st.floats(0.01, 10),
    cap=st.floats(0.01, 100),
    limit=st.integers(1, 30),
    exits=st.integers(0, 40),
)
def test_delays_grow_up_to_the_cap_and_stop_at_the_limit(
    first: float, cap: float, limit: int, exits: int
) -> None:
    policy = RestartPolicy(first_delay_s=first, max_delay_s=cap, max_early_exits=limit)
    delay = policy.delay(exits)
    if exits >= limit:
        assert delay is None
        return
    assert delay is not None and 0 <= delay <= max(cap, 0)
    following = policy.delay(exits + 1)
    assert following is None or following >= delay

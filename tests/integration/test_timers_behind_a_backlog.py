"""A tracker 10 minutes behind its producers: every deadline still fires, once, and lag is no skew.

The tracker records each event 10 minutes after it occurred (a steady backlog, twice the default
clock-skew tolerance) on an injected clock that moves one step at a time; between steps the timer
loop's lap runs (``fire_due_timers`` until nothing is due). Cooldowns and leases fall due while the
tracker is still that far behind. On the in-memory stores and on the SQL stores (SQLite and
PostgreSQL, log and projection in one database), deterministically:

- every owed retry fires exactly once, and at the first step at or after its deadline, counted
  from when the failure (or the lease expiry) was recorded: a cooldown derived from a 10-minute-old
  ``occurred_at`` would have been due before the failure was even recorded;
- a late heartbeat keeps its lease: no lease expires that a heartbeat extended in time;
- nothing is flagged ``clock_skew``, while an event dated ahead of the clock beyond the tolerance
  is, and one dated ahead within it is not.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from app.adapters.memory_log import InMemoryEventLog
from app.adapters.memory_store import InMemoryProjectionStore
from app.adapters.sql_log import SqlEventLog
from app.adapters.sql_schema import migrate
from app.adapters.sql_store import SqlProjectionStore
from app.domain.chain import RecordedEvent
from app.domain.decide import cooldown
from app.domain.events import Completed, Failed, Heartbeat, JobEvent, Reserved, Submitted
from app.domain.policy import Policy
from app.ports import EventLog, ProjectionStore
from app.services.tracking import Tracker, fold_history

T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
BACKLOG = timedelta(minutes=10)
STEP = timedelta(seconds=1)
POLICY = Policy.from_toml(
    """
clock_skew_tolerance_seconds = 300
[defaults]
max_attempts = 3
lease_seconds = 60
ttl_seconds = 3600
[defaults.retry]
initial_interval_seconds = 10
backoff_coefficient = 2
max_interval_seconds = 100
"""
)
JOBS_PER_KIND = 8
EXPECTED = {
    "cool": ["submitted", "reserved", "failed", "retried"],
    "lease": ["submitted", "reserved", "expired", "retried"],
    "beat": ["submitted", "reserved", "heartbeat", "heartbeat", "completed"],
}


class StepClock:
    """The tracker's clock, moved by the test only."""

    def __init__(self, at: datetime) -> None:
        self.at = at

    def now(self) -> datetime:
        return self.at


def _envelope(job_id: str, at: datetime) -> dict[str, Any]:
    return {
        "event_id": uuid.uuid4(),
        "job_id": job_id,
        "occurred_at": at,
        "attempt": 1,
        "source": "load",
    }


def _job(kind: str, job_id: str, start: datetime) -> list[JobEvent]:
    """One job's producer events, each stamped when it occurred."""

    def s(seconds: float) -> dict[str, Any]:
        return _envelope(job_id, start + timedelta(seconds=seconds))

    events: list[JobEvent] = [
        Submitted(
            **s(0), job_type="batch", model="m", priority="bulk", tenant="t", pool="p", queue="q.p"
        ),
    ]
    if kind == "cool":
        events += [
            Reserved(**s(1), node_id="n1"),
            Failed(**s(2), node_id="n1", error_code="oom", retryable=True),
        ]
    elif kind == "lease":
        events += [Reserved(**s(1), node_id="n1", lease_seconds=20)]
    else:  # heartbeats 50 s apart on a 60 s lease: recorded 10 min late, still in time
        events += [
            Reserved(**s(1), node_id="n1"),
            Heartbeat(**s(51), node_id="n1"),
            Heartbeat(**s(101), node_id="n1"),
            Completed(**s(140), node_id="n1"),
        ]
    return events


def producer_stream() -> list[JobEvent]:
    """Jobs of every kind starting 3 s apart, in the order their events occurred."""
    events = []
    for n in range(3 * JOBS_PER_KIND):
        kind = list(EXPECTED)[n % 3]
        events += _job(kind, f"{kind}-{n:02d}", T0 + timedelta(seconds=3 * n))
    return sorted(events, key=lambda e: e.occurred_at)


@pytest.fixture(
    params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.integration)]
)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str | None:
    """None for the in-memory stores, else one database for the SQL log and projection."""
    if request.param == "memory":
        return None
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'jobtrail.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
async def stores(store_url: str | None) -> AsyncIterator[tuple[EventLog, ProjectionStore]]:
    if store_url is None:
        yield InMemoryEventLog(), InMemoryProjectionStore()
        return
    await migrate(store_url)
    log, store = SqlEventLog(store_url), SqlProjectionStore(store_url)
    await log.ensure_schema()
    try:
        yield log, store
    finally:
        await log.close()
        await store.close()


async def run_behind_a_backlog(tracker: Tracker, clock: StepClock, stream: list[JobEvent]) -> None:
    """Record each event BACKLOG after it occurred, a step at a time, with a timer lap per step."""
    pending = list(stream)
    end = stream[-1].occurred_at + BACKLOG + timedelta(minutes=2)
    while clock.at <= end:
        due = [e for e in pending if e.occurred_at + BACKLOG <= clock.at]
        if due:
            await tracker.record(due)
            pending = pending[len(due) :]
        while await tracker.fire_due_timers():
            pass
        clock.at += STEP
    assert not pending


def check_fired_on_time(history: list[RecordedEvent]) -> None:
    """The lease ran out and the cooldown ended each at the first step at or after its deadline,
    counted from a recording (the reservation's, then the failure's or the expiry's), never from
    a producer's ``occurred_at`` 10 minutes earlier (which would put them before the recording)."""
    reserved, ended, retried = history[1], history[-2], history[-1]
    if ended.event.type == "expired":
        lease_end = reserved.recorded_at + timedelta(seconds=20)
        assert lease_end <= ended.event.occurred_at < lease_end + STEP, (reserved, ended)
    else:
        assert ended.event.type == "failed"
    state = fold_history(history[:-1], POLICY)
    assert state.spec is not None and state.cooling_since == ended.recorded_at
    wait = cooldown(POLICY.for_job(state.spec).retry, 1, state.job_id, 1, POLICY.jitter)
    due = ended.recorded_at + wait
    assert due <= retried.event.occurred_at < due + STEP, (due, retried)


async def test_deadlines_fire_once_and_on_time_behind_a_10_minute_backlog(
    stores: tuple[EventLog, ProjectionStore],
) -> None:
    log, store = stores
    clock = StepClock(T0 + BACKLOG)
    tracker = Tracker(log, store, POLICY, clock)
    stream = producer_stream()
    await run_behind_a_backlog(tracker, clock, stream)

    histories = await log.read_jobs(sorted({e.job_id for e in stream}))
    assert {j: [r.event.type for r in h] for j, h in histories.items()} == {
        j: EXPECTED[j.split("-")[0]] for j in histories
    }
    lags = {
        r.recorded_at - r.event.occurred_at
        for h in histories.values()
        for r in h
        if r.event.source == "load"
    }
    assert min(lags) >= BACKLOG, "every producer event was recorded 10 minutes late"
    for job_id, history in histories.items():
        state = fold_history(history, POLICY)
        assert state.anomalies == (), (job_id, state.anomalies)
        if not job_id.startswith("beat"):
            check_fired_on_time(history)
    owed = {str(h[-1].event.event_id) for h in histories.values() if h[-1].event.type == "retried"}
    messages = await store.pending_outbox(1000)
    assert sorted(m.event_id for m in messages) == sorted(owed), "one message per retry, once"
    assert len(owed) == 2 * JOBS_PER_KIND
    assert all(t.kind == "ttl" for t in await store.due_timers(clock.at + timedelta(hours=2), 100))


async def test_only_an_event_dated_ahead_of_the_clock_beyond_the_tolerance_is_flagged(
    stores: tuple[EventLog, ProjectionStore],
) -> None:
    log, store = stores
    clock = StepClock(T0)
    tracker = Tracker(log, store, POLICY, clock)
    tolerance = POLICY.clock_skew_tolerance
    dated = {
        "ahead": T0 + tolerance + timedelta(seconds=1),
        "just-ahead": T0 + tolerance,
        "behind": T0 - timedelta(hours=3),
    }
    await tracker.record([_job("cool", job_id, at)[0] for job_id, at in dated.items()])
    histories = await log.read_jobs(list(dated))
    flagged = {
        job_id: [(a.seq, a.kind) for a in fold_history(h, POLICY).anomalies]
        for job_id, h in histories.items()
    }
    assert flagged == {"ahead": [(1, "clock_skew")], "just-ahead": [], "behind": []}
    row = await store.get_job("ahead")
    assert row is not None and (row.status, row.anomalies) == ("queued", 1)
    assert row.next_deadline_at == T0 + timedelta(hours=1), "the TTL counts from recorded_at"

"""Deadlines that pass while the tracker is down fire once when it is back; clocks ahead of the
tracker's are flagged, events recorded late (lag) are not, and neither reorders a job's history."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from app.client import JobtrailClient
from app.domain.events import RetryOverride
from tests import servers
from tests.e2e.harness import history, status
from tests.faults.conftest import (
    SCALE,
    FaultTracker,
    make_env,
    quarantined,
    settle,
    take_census,
    write_artifact,
)
from tests.faults.test_kill_storm import Stream, publish_events, scenario_events

pytestmark = [pytest.mark.faults, pytest.mark.timeout(SCALE.test_timeout)]


@pytest.fixture
def pg_stores() -> Iterator[tuple[str, str]]:
    with servers.pg_database() as log_url, servers.pg_database() as sql_url:
        yield log_url, sql_url


def _deadline_jobs(tag: str) -> tuple[list[Any], dict[str, list[str]]]:
    """A cooldown, a lease and a TTL, each a few seconds long; and each job's expected history."""
    cooling, leased, ttl = f"cool-{tag}", f"lease-{tag}", f"ttl-{tag}"
    events = scenario_events(cooling, ("submitted", "reserved", "failed"))
    three = RetryOverride(initial_interval_seconds=3, max_interval_seconds=3)
    events[0] = events[0].model_copy(update={"retry": three})
    lease = scenario_events(leased, ("submitted", "reserved"))
    lease[1] = lease[1].model_copy(update={"lease_seconds": 3})
    short = scenario_events(ttl, ("submitted",))
    short[0] = short[0].model_copy(update={"ttl_seconds": 3})
    expected = {
        cooling: ["submitted", "reserved", "failed", "retried"],
        leased: ["submitted", "reserved", "expired", "retried"],
        ttl: ["submitted", "expired"],
    }
    return events + lease + short, expected


def _down_past_deadlines(tracker: FaultTracker, jobs: list[str]) -> tuple[datetime, int]:
    """Kill the tracker and stay down until every job's deadline has passed; returns the latest
    deadline and how many decisions were recorded meanwhile (none can be: nobody is up)."""
    tracker.kill()
    deadlines = [(status(tracker.env, job) or {})["next_deadline_at"] for job in jobs]
    last = max(datetime.fromisoformat(d) for d in deadlines)
    time.sleep(max((last - datetime.now(UTC)).total_seconds(), 0) + 1.0)  # the outage itself
    census, _, _ = asyncio.run(take_census(tracker.env, compare=False))
    return last, sum(census.types[t] for t in ("retried", "expired"))


def test_deadlines_passed_while_down_fire_once_after_restart(
    rabbit_url: str,
    pg_stores: tuple[str, str],
    fault_tracker: Callable[[dict[str, str]], FaultTracker],
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    tracker = fault_tracker(make_env(rabbit_url, *pg_stores, tmp_path))
    tracker.start()
    events, expected = _deadline_jobs(uuid.uuid4().hex[:8])
    asyncio.run(publish_events(rabbit_url, events, duplicate_every=0))
    cooling, leased, ttl = expected
    waiting = {cooling: ("cooling_down", 1, "p"), leased: ("reserved", 1, "p"),
               ttl: ("queued", 1, "p")}  # fmt: skip
    ids = {str(e.event_id) for e in events}
    settle(tracker.env, ids, lambda: True, Stream(events, waiting).unsettled, timeout=60)
    last, fired_while_down = _down_past_deadlines(tracker, list(expected))
    back_at = datetime.now(UTC)  # the restart: the process is spawned now
    tracker.start()
    final = {cooling: ("queued", 2, "p"), leased: ("queued", 2, "p"), ttl: ("expired", 1, "p")}
    census, counts = settle(tracker.env, ids, lambda: True, Stream(events, final).unsettled)
    histories = {job: history(tracker.env, job) for job in expected}
    fired = [e for h in histories.values() for e in h if e["source"] == "jobtrail"]
    lags = [(datetime.fromisoformat(e["recorded_at"]) - back_at).total_seconds() for e in fired]
    counts |= {
        "deadlines_passed_while_down": len(expected),
        "fired_while_down": fired_while_down,
        "fired_after_restart": len(fired),
        "fired_before_restart_moment": sum(lag < 0 for lag in lags),
        "slowest_fire_after_spawn_seconds": round(max(lags, default=0.0), 2),
        "quarantined": quarantined(rabbit_url),
        "crashes": tracker.crashes(),
        "tracebacks": tracker.tracebacks()["app"],
    }
    write_artifact("timers_across_restart", counts, started)
    assert {job: [e["type"] for e in h] for job, h in histories.items()} == expected
    assert last < back_at and fired_while_down == 0, (last, back_at)
    zero = ("fired_before_restart_moment", "mismatched", "quarantined", "crashes", "tracebacks")
    assert {k: counts[k] for k in zero} == dict.fromkeys(zero, 0), counts


SKEWED = {
    "submitted": timedelta(hours=3),
    "reserved": timedelta(hours=-3),
    "heartbeat": timedelta(hours=5),
    "completed": timedelta(hours=-6),
}
BACKLOG = timedelta(minutes=10)
"""Twice the default clock-skew tolerance: lag, never skew."""


def _skewed_jobs(tag: str, now: datetime) -> Stream:
    """Four jobs: clocks hours off either way (only the two ahead are skew); clocks going
    backwards within tolerance; a reservation stamped 3 h ago with a 60 s lease, which must run
    from recorded_at; and a failure stamped 10 minutes ago (as from a backlog) with a 3 s
    cooldown, whose retry must still fire, counted from the failure's recording."""
    skewed, drifting, leased, behind = (f"{k}-{tag}" for k in ("skew", "drift", "lease", "late"))
    events = scenario_events(skewed, ("submitted", "reserved", "heartbeat", "completed"))
    events = [e.model_copy(update={"occurred_at": now + SKEWED[e.type]}) for e in events]
    drift = scenario_events(drifting, ("submitted", "reserved", "completed"))
    drift = [e.model_copy(update={"occurred_at": now - timedelta(minutes=n)}) for n, e in
             enumerate(drift)]  # fmt: skip
    lease = scenario_events(leased, ("submitted", "reserved"))
    lease[1] = lease[1].model_copy(update={"occurred_at": now - timedelta(hours=3),
                                           "lease_seconds": 60})  # fmt: skip
    late = scenario_events(behind, ("submitted", "reserved", "failed"))
    three = RetryOverride(initial_interval_seconds=3, max_interval_seconds=3)
    late[0] = late[0].model_copy(update={"retry": three})
    late = [e.model_copy(update={"occurred_at": now - BACKLOG}) for e in late]
    final = {skewed: ("completed", 1, "p"), drifting: ("completed", 1, "p"),
             leased: ("reserved", 1, "p"), behind: ("queued", 2, "p")}  # fmt: skip
    return Stream(events + drift + lease + late, final)


def test_only_clocks_ahead_are_flagged_lag_is_not_and_history_is_never_reordered(
    mongo_url: str,
    pg_url: str,
    rabbit_url: str,
    fault_tracker: Callable[[dict[str, str]], FaultTracker],
    tmp_path: Path,
) -> None:
    started, now, tag = time.monotonic(), datetime.now(UTC), uuid.uuid4().hex[:8]
    tracker = fault_tracker(make_env(rabbit_url, mongo_url, pg_url, tmp_path))
    tracker.start()
    stream = _skewed_jobs(tag, now)
    asyncio.run(_publish_as_stamped(rabbit_url, stream.events))
    census, counts = settle(tracker.env, stream.event_ids, lambda: True, stream.unsettled)
    jobs = list(stream.expected)
    histories = {job: history(tracker.env, job) for job in jobs}
    order = {job: [(e["seq"], e["type"]) for e in h] for job, h in histories.items()}
    sent = {job: [e.type for e in stream.events if e.job_id == job] for job in jobs}
    produced = {
        j: [e["type"] for e in h if e["source"] != "jobtrail"] for j, h in histories.items()
    }
    counts |= {
        "dated_ahead_beyond_tolerance": 2,
        "dated_behind_beyond_tolerance": 6,
        "flagged_clock_skew": census.anomalies("clock_skew"),
        "reordered": sum(produced[j] != sent[j] for j in jobs),
        "quarantined": quarantined(rabbit_url),
        "crashes": tracker.crashes(),
    }
    write_artifact("clock_skew", counts, started, skew_hours=[-6, -3, 3, 5],
                   backlog_minutes=BACKLOG.total_seconds() / 60)  # fmt: skip
    skewed, drifting, leased, behind = jobs
    assert order[skewed] == [(1, "submitted"), (2, "reserved"), (3, "heartbeat"), (4, "completed")]
    assert [s for s, _ in order[drifting]] == [1, 2, 3]
    flagged = {job: [(a.seq, a.kind) for a in census.states[job].anomalies] for job in jobs}
    assert flagged == {skewed: [(1, "clock_skew"), (3, "clock_skew")], drifting: [], leased: [],
                       behind: []}  # fmt: skip
    lease_deadline = (status(tracker.env, leased) or {})["next_deadline_at"]
    assert datetime.fromisoformat(lease_deadline) > now + timedelta(seconds=50)
    assert [t for _, t in order[behind]] == ["submitted", "reserved", "failed", "retried"]
    failed_at, retried_at = (
        datetime.fromisoformat(e["recorded_at"]) for e in histories[behind][2:]
    )
    assert retried_at - failed_at >= timedelta(seconds=3 * 0.8), (
        "the cooldown counts from recording"
    )
    zero = ("lost", "mismatched", "reordered", "quarantined", "crashes")
    assert {k: counts[k] for k in zero} == dict.fromkeys(zero, 0), counts
    assert (counts["anomalies"], counts["flagged_clock_skew"]) == (2, 2), counts


async def _publish_as_stamped(rabbit_url: str, events: list[Any]) -> None:
    """Publish events in order with the producer clocks they carry (no restamping)."""
    async with JobtrailClient(rabbit_url, "skewed") as client:
        for event in events:
            await client.publish(event)

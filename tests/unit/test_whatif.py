"""What-if replays: the live policy reproduces real history exactly; another policy changes it.

The history is produced by the real ``Tracker`` service (on the in-memory fakes here; on the real
stores in tests/integration/test_rebuild_export.py) with a fake clock that fires every timer
exactly when it falls due. ``SCRIPT`` and ``drive`` are shared with those tests.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from app.adapters.memory_log import InMemoryEventLog
from app.adapters.memory_store import InMemoryProjectionStore
from app.domain.chain import RecordedEvent
from app.domain.events import (
    Cancelled,
    Completed,
    DeadLettered,
    Failed,
    Heartbeat,
    JobEvent,
    Redriven,
    Reserved,
    Submitted,
    canonical_json,
)
from app.domain.policy import Policy
from app.ports import EventLog, ProjectionStore
from app.services.rebuild import job_histories
from app.services.tracking import Tracker
from app.services.whatif import (
    WhatIfReport,
    compare_job,
    decisions,
    input_batches,
    is_decision,
    simulate,
    tally,
    whatif,
)

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
END = 400.0
"""Seconds after T0 at which the scripted history ends (every job is terminal by then)."""

LIVE_POLICY_TOML = """
jitter = 0.2
[defaults]
max_attempts = 3
lease_seconds = 60
ttl_seconds = 3600
non_retryable_errors = ["invalid_input"]
[defaults.retry]
initial_interval_seconds = 10
backoff_coefficient = 2.0
max_interval_seconds = 60
[job_types.batch]
lease_seconds = 300
[pools.flaky]
fallback_pools = ["steady"]
reroute_after_failures = 1
"""
LIVE = Policy.from_toml(LIVE_POLICY_TOML)


def at(offset: float) -> datetime:
    return T0 + timedelta(seconds=offset)


def _env(job: str, t: float, attempt: int, source: str) -> dict[str, Any]:
    return {
        "event_id": uuid.uuid5(uuid.NAMESPACE_URL, f"{job}/{t}/{attempt}/{source}/{uuid.uuid4()}"),
        "job_id": job,
        "occurred_at": at(t),
        "attempt": attempt,
        "source": source,
    }


def sub(job: str, t: float, **extra: Any) -> Submitted:
    fields: dict[str, Any] = {
        "job_type": "sync",
        "model": "m-small",
        "priority": "urgent",
        "tenant": "acme",
        "pool": "steady",
        "queue": "work.steady",
        "payload": {"prompt": job},
    }
    return Submitted(**_env(job, t, 1, "cloud"), **(fields | extra))


def res(job: str, t: float, node: str, attempt: int = 1) -> Reserved:
    return Reserved(**_env(job, t, attempt, node), node_id=node)


def beat(job: str, t: float, node: str, attempt: int = 1) -> Heartbeat:
    return Heartbeat(**_env(job, t, attempt, node), node_id=node)


def done(job: str, t: float, node: str, attempt: int = 1) -> Completed:
    return Completed(**_env(job, t, attempt, node), node_id=node)


def fail(
    job: str, t: float, node: str, code: str, attempt: int = 1, retryable: bool = True
) -> Failed:
    return Failed(
        **_env(job, t, attempt, node),
        node_id=node,
        error_code=code,
        error_message=f"{code} on {node}",
        retryable=retryable,
    )


def script() -> list[tuple[float, list[JobEvent]]]:
    """(seconds after T0, events recorded together) — a fresh copy with fresh event ids."""
    return [
        (0, [sub("ok-1", 0), sub("retry-1", 0, job_type="batch", model="m-large")]),
        (0, [sub("reroute-1", 0, pool="flaky", queue="work.flaky"), sub("lease-1", 0)]),
        (0, [sub("ttl-1", 0, ttl_seconds=120), sub("dead-nonretry", 0)]),
        (0, [sub("dead-exhausted", 0, max_attempts=2), sub("redrive-1", 0)]),
        (0, [sub("cancel-1", 0), sub("broker-1", 0), sub("lease-dead", 0, max_attempts=1)]),
        (1, [res("ok-1", 1, "n1"), res("reroute-1", 1, "n3"), res("lease-1", 1, "n4")]),
        (
            1,
            [
                res("dead-nonretry", 1, "n2"),
                res("dead-exhausted", 1, "n2"),
                res("lease-dead", 1, "n4"),
            ],
        ),
        (1, [res("redrive-1", 1, "n1"), res("cancel-1", 1, "n1")]),
        (
            2,
            [
                res("retry-1", 2, "n2"),
                fail("dead-nonretry", 2, "n2", "invalid_input", retryable=False),
            ],
        ),
        (2, [fail("dead-exhausted", 2, "n2", "timeout"), fail("cancel-1", 2, "n1", "oom")]),
        (
            3,
            [fail("reroute-1", 3, "n3", "cuda_error"), fail("redrive-1", 3, "n1", "invalid_input")],
        ),
        (5, [done("ok-1", 5, "n1")]),
        (5, [Cancelled(**_env("cancel-1", 5, 1, "cloud"), actor="bob", reason="not needed")]),
        (10, [fail("retry-1", 10, "n2", "oom")]),
        (30, [res("dead-exhausted", 30, "n3", 2)]),
        (
            30,
            [DeadLettered(**_env("broker-1", 30, 1, "broker"), reason="poison", detail="x-death")],
        ),
        (31, [fail("dead-exhausted", 31, "n3", "timeout", 2)]),
        (40, [res("retry-1", 40, "n1", 2), res("reroute-1", 40, "n1", 2)]),
        (45, [done("reroute-1", 45, "n1", 2)]),
        (50, [done("retry-1", 50, "n1", 2)]),
        (90, [done("lease-1", 90, "n4", 1)]),  # after its lease ran out and it was retried: stale
        (100, [res("lease-1", 100, "n5", 2)]),
        (130, [beat("lease-1", 130, "n5", 2)]),
        (150, [done("lease-1", 150, "n5", 2)]),
        (
            200,
            [
                Redriven(
                    **_env("redrive-1", 200, 2, "operator"),
                    actor="alice",
                    pool="steady",
                    queue="work.steady",
                    reason="fixed input",
                )
            ],
        ),
        (210, [res("redrive-1", 210, "n2", 2)]),
        (220, [done("redrive-1", 220, "n2", 2)]),
        (
            300,
            [sub("same-batch", 300), res("same-batch", 300, "n1"), done("same-batch", 300, "n1")],
        ),
    ]


class FakeClock:
    def __init__(self) -> None:
        self.at = T0

    def now(self) -> datetime:
        return self.at


async def drive(
    tracker: Tracker,
    store: ProjectionStore,
    clock: FakeClock,
    steps: Sequence[tuple[float, list[JobEvent]]],
) -> None:
    """Record each step at its instant; fire every timer exactly when due, up to ``END``."""
    for offset, events in steps:
        await fire_timers(tracker, store, clock, at(offset), inclusive=False)
        clock.at = at(offset)
        await tracker.record(events)
    await fire_timers(tracker, store, clock, at(END), inclusive=True)


async def fire_timers(
    tracker: Tracker, store: ProjectionStore, clock: FakeClock, limit: datetime, *, inclusive: bool
) -> None:
    for _ in range(1000):
        due = await store.next_timer_at()
        if due is None or due > limit or (due == limit and not inclusive):
            return
        clock.at = max(due, clock.at)
        assert await tracker.fire_due_timers() > 0
    raise AssertionError("timers kept firing")


async def real_history(log: EventLog, store: ProjectionStore) -> dict[str, list[RecordedEvent]]:
    """Run the script through the real Tracker; return every job's recorded history."""
    clock = FakeClock()
    await drive(Tracker(log, store, LIVE, clock), store, clock, script())
    return {h[0].job_id: h async for h in job_histories(log.scan())}


@pytest.fixture(scope="module")
async def histories() -> dict[str, list[RecordedEvent]]:
    return await real_history(InMemoryEventLog(), InMemoryProjectionStore())


def types_of(history: Sequence[RecordedEvent]) -> list[str]:
    return [r.event.type for r in history]


def signature(history: Sequence[RecordedEvent]) -> list[tuple[int, datetime, str]]:
    return [(r.seq, r.recorded_at, canonical_json(r.event)) for r in history]


def test_the_script_exercises_every_kind_of_decision(
    histories: dict[str, list[RecordedEvent]],
) -> None:
    decided = Counter(
        (r.event.type, str(getattr(r.event, "reason", "")))
        for h in histories.values()
        for r in h
        if is_decision(r.event)
    )
    assert decided[("retried", "")] >= 3
    assert decided[("rerouted", "")] == 1
    assert decided[("expired", "lease")] == 2
    assert decided[("expired", "ttl")] == 1
    assert decided[("dead_lettered", "non_retryable")] == 2
    assert decided[("dead_lettered", "retries_exhausted")] == 2
    assert types_of(histories["lease-dead"])[-2:] == ["expired", "dead_lettered"]
    assert types_of(histories["same-batch"]) == ["submitted", "reserved", "completed"]


def test_the_live_policy_reproduces_every_recorded_event(
    histories: dict[str, list[RecordedEvent]],
) -> None:
    for job_id, real in histories.items():
        replayed = simulate(real, LIVE, at(END))
        assert signature(replayed) == signature(real), job_id


async def test_whatif_with_the_live_policy_changes_nothing() -> None:
    log = InMemoryEventLog()
    await real_history(log, InMemoryProjectionStore())
    report = await whatif(log, LIVE, LIVE, at(END))
    assert report.jobs_changed == 0 and report.examples == []
    assert report.real == report.simulated
    assert report.real.jobs == 12
    assert report.real.as_dict()["dead_letter_reasons"] == {
        "non_retryable": 1,  # the other one was redriven and completed
        "retries_exhausted": 2,
        "poison": 1,
    }
    assert (report.real.completed, report.real.expired, report.real.cancelled) == (6, 1, 1)


async def test_fewer_attempts_dead_letter_more_and_leave_orphan_reports() -> None:
    log = InMemoryEventLog()
    await real_history(log, InMemoryProjectionStore())
    strict = Policy.from_toml(LIVE_POLICY_TOML.replace("max_attempts = 3", "max_attempts = 1"))
    report = await whatif(log, LIVE, strict, at(END))
    real, sim = report.real, report.simulated
    # dead-exhausted allows itself 2 attempts whatever the policy says
    assert (real.retried + real.rerouted, sim.retried + sim.rerouted) == (4, 1)
    # retry-1, reroute-1, lease-1, and cancel-1 (dead before its cancellation came)
    assert sim.dead_lettered == real.dead_lettered + 4
    assert (real.cancelled, sim.cancelled) == (1, 0)
    assert 0 < sim.cooldown_seconds < real.cooldown_seconds
    assert sim.anomalies > real.anomalies  # attempt-2 reports of jobs that no longer exist
    changed = {c.job_id: c for c in report.examples}
    assert set(changed) == {"retry-1", "reroute-1", "lease-1", "cancel-1"}
    assert report.jobs_changed == 4
    assert changed["retry-1"].simulated_decisions == ("dead_lettered#1:retries_exhausted",)
    assert (changed["retry-1"].real_status, changed["retry-1"].simulated_status) == (
        "completed",
        "dead_lettered",
    )


def test_a_policy_without_the_reroute_rule_retries_in_place(
    histories: dict[str, list[RecordedEvent]],
) -> None:
    plain = Policy.from_toml(LIVE_POLICY_TOML.split("[pools.flaky]")[0])
    replayed = simulate(histories["reroute-1"], plain, at(END))
    assert decisions(replayed) == ("retried#2:flaky",)
    assert decisions(histories["reroute-1"]) == ("rerouted#2:steady",)
    assert replayed[-1].event.type == "completed"  # the node's report still fits attempt 2


def test_longer_cooldowns_make_early_reports_future_anomalies(
    histories: dict[str, list[RecordedEvent]],
) -> None:
    slow = Policy.from_toml(
        LIVE_POLICY_TOML.replace("initial_interval_seconds = 10", "initial_interval_seconds = 60")
    )
    replayed = simulate(histories["retry-1"], slow, at(END))
    kinds = [a.kind for a in tally_state(replayed, slow).anomalies]
    assert "future_attempt" in kinds
    real, sim = tally(histories["retry-1"], LIVE, at(END)), tally(replayed, slow, at(END))
    assert sim.cooldown_seconds > real.cooldown_seconds


def tally_state(history: Sequence[RecordedEvent], policy: Policy) -> Any:
    from app.services.tracking import fold_history

    return fold_history(history, policy)


def test_inputs_are_batched_by_instant_and_split_by_decisions() -> None:
    def rec(event: JobEvent, seq: int, t: float) -> RecordedEvent:
        return RecordedEvent(seq, at(t), "", "", event)

    decided = DeadLettered(**_env("j", 2, 1, "jobtrail"), reason="non_retryable")
    history = [
        rec(sub("j", 0), 1, 0),
        rec(res("j", 0, "n"), 2, 0),
        rec(fail("j", 2, "n", "x"), 3, 2),
        rec(decided, 4, 2),
        rec(done("j", 2, "n"), 5, 2),
    ]
    assert [[r.seq for r in b] for b in input_batches(history)] == [[1, 2], [3], [5]]


def test_simulation_stops_at_as_of(histories: dict[str, list[RecordedEvent]]) -> None:
    cut = simulate(histories["ttl-1"], LIVE, at(119))
    assert types_of(cut) == ["submitted"]
    assert types_of(simulate(histories["ttl-1"], LIVE, at(120))) == ["submitted", "expired"]
    assert tally(cut, LIVE, at(119)).live == 1


def test_cooldown_time_is_the_time_spent_cooling(histories: dict[str, list[RecordedEvent]]) -> None:
    real = histories["retry-1"]
    failed_at = next(r.recorded_at for r in real if r.event.type == "failed")
    retried_at = next(r.recorded_at for r in real if r.event.type == "retried")
    assert tally(real, LIVE, at(END)).cooldown_seconds == (retried_at - failed_at).total_seconds()
    cancelled = tally(histories["cancel-1"], LIVE, at(END))
    assert (cancelled.cancelled, cancelled.cooldown_seconds) == (1, 3.0)


def test_history_after_as_of_is_left_out(histories: dict[str, list[RecordedEvent]]) -> None:
    report = WhatIfReport(as_of=at(-1))
    compare_job(report, histories["ok-1"], LIVE, LIVE)
    assert report.real.jobs == 0
    report = WhatIfReport(as_of=at(2))
    compare_job(report, histories["ok-1"], LIVE, LIVE)
    assert (report.real.live, report.simulated.live, report.jobs_changed) == (1, 1, 0)

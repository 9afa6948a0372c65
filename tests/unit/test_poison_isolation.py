"""One event the store refuses costs only itself: isolation in the batcher, health per loop.

The store here is the in-memory log wrapped to refuse one event id (a stand-in for a database
refusal; the real ones are in tests/integration/test_write_refusals.py and
tests/integration/test_poison_batch.py).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

import pytest

from app.adapters.clock import SystemClock
from app.adapters.memory_log import InMemoryEventLog
from app.adapters.memory_store import InMemoryProjectionStore
from app.domain.events import JobEvent, Reserved
from app.ports import (
    AppendOutcome,
    LogUnavailable,
    OutboxMessage,
    ProjectionUnavailable,
    ProjectionUpdate,
    TimerRow,
    WriteRefused,
)
from app.services.batcher import Batcher
from app.services.health import Health
from app.services.ingest import Ingestor
from app.services.relay import OutboxRelay, TimerLoop
from app.services.tracking import Tracker
from tests.unit.test_tracking_service import (
    POLICY,
    T0,
    FakeClock,
    FakePublisher,
    env,
    submitted,
)


class RefusingLog(InMemoryEventLog):
    """Refuses any batch holding ``poison`` (as a database refuses a whole transaction)."""

    def __init__(self, poison: set[str]) -> None:
        super().__init__()
        self.poison = poison
        self.offered: Counter[str] = Counter()
        self.outage = 0

    async def append_many(
        self, events: Sequence[JobEvent], recorded_at: datetime
    ) -> list[AppendOutcome]:
        if self.outage:
            self.outage -= 1
            raise LogUnavailable("log down")
        self.offered.update(str(e.event_id) for e in events)
        refused = [e for e in events if str(e.event_id) in self.poison]
        if refused:
            raise WriteRefused(f"the log refused job {refused[0].job_id!r}: value too long")
        return await super().append_many(events, recorded_at)


def _tracking(log: RefusingLog) -> tuple[Batcher, Health]:
    tracker = Tracker(log, InMemoryProjectionStore(), POLICY, SystemClock())
    health = Health()
    # A long linger: every event submitted below lands in one batch of 256.
    return Batcher(tracker.record, health, max_size=256, max_wait=0.5), health


async def test_a_refused_event_is_isolated_and_its_batch_mates_recorded_once() -> None:
    events = [submitted(f"j{i}") for i in range(256)]
    poison = events[137]
    log = RefusingLog({str(poison.event_id)})
    batcher, health = _tracking(log)
    publisher = FakePublisher()
    ingestor = Ingestor(batcher, publisher)
    batcher.start()
    try:
        await asyncio.wait_for(
            asyncio.gather(*(ingestor.accept(e.model_dump_json().encode()) for e in events)), 30
        )
    finally:
        await batcher.stop()
    assert await log.count() == 255
    assert log.offered[str(poison.event_id)] == 1 + 8, "the whole batch, then one per halving"
    assert [body for body, _ in publisher.quarantined] == [poison.model_dump_json().encode()]
    reason = publisher.quarantined[0][1]
    assert reason.startswith("refused_by_store: ") and "value too long" in reason
    assert health.ok, "a refusal is not an outage"
    assert batcher.recorded == 255


async def test_an_outage_during_isolation_retries_and_still_isolates() -> None:
    events = [submitted(f"j{i}") for i in range(64)]
    log = RefusingLog({str(events[5].event_id), str(events[60].event_id)})
    batcher, health = _tracking(log)
    batcher.start()
    try:
        results = asyncio.gather(*(batcher.submit(e) for e in events), return_exceptions=True)
        await asyncio.sleep(0)
        log.outage = 1  # the first record meets an outage: retried, then isolated
        outcome = await asyncio.wait_for(results, 30)
    finally:
        await batcher.stop()
    refused = [i for i, r in enumerate(outcome) if isinstance(r, WriteRefused)]
    assert refused == [5, 60]
    assert all(r is None for i, r in enumerate(outcome) if i not in refused)
    assert await log.count() == 62 and health.ok


class BuggyLog(RefusingLog):
    async def append_many(
        self, events: Sequence[JobEvent], recorded_at: datetime
    ) -> list[AppendOutcome]:
        if any(str(e.event_id) in self.poison for e in events):
            raise TypeError("a bug met by one event")
        return await super().append_many(events, recorded_at)


async def test_a_bug_met_by_one_event_fails_that_message_only_and_is_not_quarantined() -> None:
    events = [submitted(f"j{i}") for i in range(16)]
    log = BuggyLog({str(events[3].event_id)})
    batcher, _ = _tracking(log)
    publisher = FakePublisher()
    ingestor = Ingestor(batcher, publisher)
    batcher.start()
    try:
        outcome = await asyncio.wait_for(
            asyncio.gather(
                *(ingestor.accept(e.model_dump_json().encode()) for e in events),
                return_exceptions=True,
            ),
            30,
        )
    finally:
        await batcher.stop()
    assert [type(r).__name__ for r in outcome].count("TypeError") == 1
    assert isinstance(outcome[3], TypeError), "nacked: the broker's delivery limit decides"
    assert publisher.quarantined == []
    assert await log.count() == 15


def test_health_is_degraded_while_any_loop_is() -> None:
    health = Health()
    health.degrade("timers", "store unavailable: x")
    health.degrade("relay", "PublishFailed: y")
    assert not health.ok
    assert health.degraded_reason == "relay: PublishFailed: y; timers: store unavailable: x"
    health.recover("timers")
    health.recover("batcher")  # a loop that was never degraded: nothing to clear
    assert health.degraded_reason == "relay: PublishFailed: y"
    health.recover("relay")
    assert health.ok and health.degraded_reason is None


class DownStore(InMemoryProjectionStore):
    """A projection store that is down for its first ``calls`` calls of the loops' reads."""

    def __init__(self, calls: int) -> None:
        super().__init__()
        self.calls = calls

    def _maybe_down(self) -> None:
        if self.calls:
            self.calls -= 1
            raise ProjectionUnavailable("sql down")

    async def claim_due_timers(self, now: datetime, limit: int, hold: timedelta) -> list[TimerRow]:
        self._maybe_down()
        return await super().claim_due_timers(now, limit, hold)

    async def pending_outbox(self, limit: int) -> list[OutboxMessage]:
        self._maybe_down()
        return await super().pending_outbox(limit)


async def _until(check: object, what: str) -> None:
    assert callable(check)
    for _ in range(1000):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("loop", ["timers", "relay"])
async def test_an_outage_seen_by_a_loop_degrades_health_and_clears_without_any_event(
    loop: str,
) -> None:
    store = DownStore(calls=2)
    health = Health()
    tracker = Tracker(InMemoryEventLog(), store, POLICY, SystemClock())
    runner = (
        TimerLoop(tracker, health, interval=0.01)
        if loop == "timers"
        else OutboxRelay(store, FakePublisher(), SystemClock(), idle_wait=0.01, health=health)
    )
    task = asyncio.create_task(runner.run())
    try:
        await _until(lambda: not health.ok, "the outage to show")
        assert health.degraded_reason is not None and health.degraded_reason.startswith(loop)
        await _until(lambda: store.calls == 0 and health.ok, "the loop to recover")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert health.ok, "cleared by the loop itself: no event went through the batcher"


class RefusingStore(InMemoryProjectionStore):
    """Refuses any projection transaction touching a job in ``poison``."""

    def __init__(self) -> None:
        super().__init__()
        self.poison: set[str] = set()

    async def apply(
        self, updates: Sequence[ProjectionUpdate], checkpoints: Mapping[str, str] | None = None
    ) -> None:
        if any(u.job.job_id in self.poison for u in updates):
            raise WriteRefused("the projection store rejected the projection batch: too long")
        await super().apply(updates, checkpoints)


async def test_a_job_the_store_refuses_does_not_hold_back_the_timers_claimed_with_it() -> None:
    store, clock = RefusingStore(), FakeClock()
    tracker = Tracker(InMemoryEventLog(), store, POLICY, clock)
    jobs = [f"j{i}" for i in range(10)]
    await tracker.record([e for j in jobs for e in (submitted(j), Reserved(**env(j), node_id="n"))])
    store.poison = {"j3"}
    clock.at = T0 + timedelta(minutes=5)  # every lease ran out
    assert await tracker.fire_due_timers() == 10
    statuses = {j: row.status for j in jobs if (row := await store.get_job(j)) is not None}
    assert statuses.pop("j3") == "reserved", "its projection was refused: left as it was"
    assert "reserved" not in statuses.values(), f"the other 9 were settled: {statuses}"

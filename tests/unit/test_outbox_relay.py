"""Outbox relays of several trackers over one outbox: each message published once, in job order."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest

from app.adapters.memory_store import InMemoryProjectionStore
from app.ports import OutboxMessage, ProjectionUnavailable, ProjectionUpdate, PublishFailed
from app.services.relay import OutboxRelay
from tests.contract.test_projection_store import job as contract_job

T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


class FakeClock:
    def __init__(self) -> None:
        self.at = T0

    def now(self) -> datetime:
        return self.at


class CountingPublisher:
    """Counts every publish; each one yields to the loop (as waiting for a confirm does)."""

    def __init__(self) -> None:
        self.published: list[tuple[str, OutboxMessage]] = []
        self.down = False

    async def publish(self, message: OutboxMessage, by: str = "") -> None:
        await asyncio.sleep(0)
        if self.down:
            raise PublishFailed("connection lost")
        self.published.append((by, message))
        await asyncio.sleep(0)

    def counts(self) -> Counter[str]:
        return Counter(m.event_id for _, m in self.published)

    def order(self, job_id: str) -> list[str]:
        return [m.event_id for _, m in self.published if m.job_id == job_id]


class Via:
    """One tracker's view of the shared publisher (records which relay published what)."""

    def __init__(self, shared: CountingPublisher, name: str) -> None:
        self.shared, self.name = shared, name

    async def publish(self, message: OutboxMessage) -> None:
        await self.shared.publish(message, self.name)

    async def quarantine(self, body: bytes, reason: str, headers: object) -> None:
        raise NotImplementedError

    async def rekey(self, body: bytes, routing_key: str, job_id: str) -> None:
        raise NotImplementedError


class SlowPublisher(Via):
    """Each publish takes ``seconds`` of the fake clock (a broker applying flow control)."""

    def __init__(self, shared: CountingPublisher, name: str, clock: FakeClock, seconds: float):
        super().__init__(shared, name)
        self.clock, self.seconds = clock, seconds

    async def publish(self, message: OutboxMessage) -> None:
        self.clock.at += timedelta(seconds=self.seconds)
        await super().publish(message)


class FlakyMarks(InMemoryProjectionStore):
    """Marking fails while ``marks_fail`` is set (the database went away after the confirm)."""

    marks_fail = False

    async def mark_published(self, event_ids: Sequence[str], at: datetime) -> None:
        if self.marks_fail:
            raise ProjectionUnavailable("connection reset")
        await super().mark_published(event_ids, at)


def row(job_id: str, n: int, at: datetime) -> OutboxMessage:
    return OutboxMessage(
        event_id=f"{job_id}-{n}",
        job_id=job_id,
        exchange="",
        routing_key="jobtrail.work.p.batch",
        body=b"{}",
        created_at=at,
    )


async def add_rows(store: InMemoryProjectionStore, jobs: int, per_job: int, seq: int = 1) -> None:
    """``per_job`` more messages for each of ``jobs`` jobs, numbered after those added before."""
    at = T0 + timedelta(seconds=seq)
    updates = [
        ProjectionUpdate(
            job=contract_job(f"j{j:03d}", last_seq=seq),
            outbox=[row(f"j{j:03d}", seq * 100 + n, at) for n in range(per_job)],
        )
        for j in range(jobs)
    ]
    await store.apply(updates)


def relays(
    store: InMemoryProjectionStore, shared: CountingPublisher, clock: FakeClock, count: int
) -> list[OutboxRelay]:
    return [
        OutboxRelay(store, Via(shared, f"t{n}"), clock, owner=f"t{n}", batch=7)
        for n in range(count)
    ]


async def test_three_relays_over_one_outbox_publish_each_message_once_in_job_order() -> None:
    store, shared, clock = InMemoryProjectionStore(), CountingPublisher(), FakeClock()
    trackers = relays(store, shared, clock, 3)
    await add_rows(store, jobs=40, per_job=2)
    for seq in range(2, 6):  # more rows arrive while the relays drain
        await asyncio.gather(*(r.drain_once() for r in trackers))
        await add_rows(store, jobs=40, per_job=1 + seq % 2, seq=seq)
    while await store.pending_outbox(1):
        await asyncio.gather(*(r.drain_once() for r in trackers))
    counts = shared.counts()
    assert len(counts) == 40 * (2 + 2 + 1 + 2 + 1)
    assert set(counts.values()) == {1}, [k for k, c in counts.items() if c > 1][:5]
    assert len({by for by, _ in shared.published}) == 3, "all three relays took a share"
    for j in range(40):
        job_id = f"j{j:03d}"
        order = shared.order(job_id)
        assert order == sorted(order, key=lambda e: int(e.rsplit("-", 1)[1])), job_id


async def test_a_relay_that_stops_mid_pass_leaves_the_rest_to_another_after_the_lease() -> None:
    store, shared, clock = InMemoryProjectionStore(), CountingPublisher(), FakeClock()
    await add_rows(store, jobs=1, per_job=4)
    slow = OutboxRelay(store, SlowPublisher(shared, "slow", clock, 6.0), clock, owner="slow")
    other = OutboxRelay(store, Via(shared, "other"), clock, owner="other")
    assert await slow.drain_once() == 3, "publishes start only in the first half of the lease"
    assert shared.order("j000") == ["j000-100", "j000-101", "j000-102"]
    assert await other.drain_once() == 1, "the rest was released: taken over at once"
    assert shared.order("j000") == ["j000-100", "j000-101", "j000-102", "j000-103"]
    assert set(shared.counts().values()) == {1}


async def test_a_crashed_relays_claim_is_taken_over_only_when_its_lease_ends() -> None:
    store, shared, clock = InMemoryProjectionStore(), CountingPublisher(), FakeClock()
    await add_rows(store, jobs=2, per_job=2)
    await store.claim_outbox("crashed", 10, clock.now(), timedelta(seconds=30))
    survivor = OutboxRelay(store, Via(shared, "t1"), clock, owner="t1", lease=30)
    assert await survivor.drain_once() == 0, "held by a tracker that may still be publishing"
    clock.at += timedelta(seconds=29.999)
    assert await survivor.drain_once() == 0
    clock.at += timedelta(seconds=0.001)
    assert await survivor.drain_once() == 4
    assert set(shared.counts().values()) == {1}


async def test_a_failed_pass_releases_its_claims_for_another_tracker() -> None:
    store, shared, clock = InMemoryProjectionStore(), CountingPublisher(), FakeClock()
    await add_rows(store, jobs=5, per_job=1)
    cut_off = CountingPublisher()
    cut_off.down = True  # this tracker lost its broker connection
    first = OutboxRelay(store, Via(cut_off, "t0"), clock, owner="t0")
    with pytest.raises(PublishFailed):
        await first.drain_once()
    second = OutboxRelay(store, Via(shared, "t1"), clock, owner="t1")
    assert await second.drain_once() == 5, "no lease to wait out: the claims were released"


async def test_a_mark_that_failed_is_retried_without_publishing_again() -> None:
    store, shared, clock = FlakyMarks(), CountingPublisher(), FakeClock()
    await add_rows(store, jobs=3, per_job=2)
    relay = OutboxRelay(store, Via(shared, "t0"), clock, owner="t0")
    store.marks_fail = True
    with pytest.raises(ProjectionUnavailable):
        await relay.drain_once()
    assert len(shared.published) == 6 and len(await store.pending_outbox(10)) == 6
    with pytest.raises(ProjectionUnavailable):
        await relay.drain_once()  # the marks come first: nothing is claimed meanwhile
    store.marks_fail = False
    assert await relay.drain_once() == 0
    assert await store.pending_outbox(10) == []
    assert set(shared.counts().values()) == {1}, "the confirmed ones were not published again"

"""Every stop is bounded (issue 10): coordinators and batchers stopped in each state they can be
in return within seconds, on the real clock, and acknowledge nothing they did not record.

The states: a partition mid-release, a held delivery, a store (or broker) call that hangs, even
one deaf to cancellation, and a batch in flight; and the moment that hung ``make test``: a stop
arriving just as the membership changed or an event arrived (Python 3.11's ``asyncio.wait_for``
swallowed the cancellation, and the stop waited forever).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest

from app.adapters.clock import SystemClock
from app.adapters.memory_store import InMemoryMembership
from app.domain.events import JobEvent
from app.services.batcher import Batcher, DeliveryAbandoned
from app.services.health import Health
from app.services.ingest import Ingestor
from app.services.partitions import PartitionCoordinator, share
from tests.unit.test_partitions import Consumers
from tests.unit.test_ring_keeper import Publisher, Recorder, until
from tests.unit.test_tracking_service import submitted

LIVENESS = 10.0
"""A generous bound on "stop returned": the stops' own bounds below add up to about 2 s."""


class Hang:
    """A call that never returns until the test ends; ``deaf`` ignores cancellation too."""

    def __init__(self, *, deaf: bool = False) -> None:
        self.deaf = deaf
        self.calls = 0
        self.over = asyncio.Event()

    async def __call__(self) -> None:
        self.calls += 1
        while not self.over.is_set():
            try:
                await self.over.wait()
            except asyncio.CancelledError:
                if not self.deaf:
                    raise


class Store(Recorder):
    """The batcher's store: hangs (``hang``) or records; counts calls in progress."""

    def __init__(self) -> None:
        super().__init__()
        self.hang: Hang | None = None
        self.waiting = 0

    async def __call__(self, events: Sequence[JobEvent]) -> None:
        self.waiting += 1
        try:
            if self.hang is not None:
                await self.hang()
            await super().__call__(events)
        finally:
            self.waiting -= 1


class HangingMembership(InMemoryMembership):
    """Membership on a store that stops answering once ``hang`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.hang: Hang | None = None

    async def beat(self, member: str, ttl: float) -> list[str]:
        if self.hang is not None:
            await self.hang()
        return await super().beat(member, ttl)

    async def leave(self, member: str) -> None:
        if self.hang is not None:
            await self.hang()
        await super().leave(member)


class HangingConsumers(Consumers):
    """A broker whose connection close stops answering once ``hang`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.hang: Hang | None = None

    async def release(self, partition: int) -> None:
        if self.hang is not None:
            await self.hang()
        await super().release(partition)


class Tracker:
    """One tracker on the real clock, with its stops' bounds short (the shape is the same)."""

    def __init__(self, membership: InMemoryMembership, name: str) -> None:
        self.store = Store()
        self.batcher = Batcher(self.store, Health(), max_wait=0.001, stop_timeout=0.5)
        self.ingestor = Ingestor(self.batcher, Publisher())
        self.consumers = HangingConsumers()
        self.coordinator = PartitionCoordinator(
            membership,
            self.consumers,
            self.ingestor,
            4,
            name,
            SystemClock(),
            ttl=1.0,
            beat_every=0.05,
            stop_grace=0.5,
            io_timeout=0.3,
        )
        self.acked: list[str] = []
        self.deliveries: list[asyncio.Task[None]] = []

    def deliver(self, partition: int, job_id: str) -> asyncio.Task[None]:
        """What the worker's handler does: accept, then acknowledge (never if abandoned)."""

        async def handle() -> None:
            with self.ingestor.delivery(partition):
                event = submitted(job_id).model_dump_json().encode()
                await self.ingestor.accept(event, partition=partition)
            self.acked.append(job_id)

        task = asyncio.create_task(handle())
        self.deliveries.append(task)
        return task

    async def stop(self) -> None:
        """What the tracker does on SIGTERM: the coordinator, then the batcher; both bounded."""
        async with asyncio.timeout(LIVENESS):
            await self.coordinator.stop()
            await self.batcher.stop()

    async def outcomes(self) -> list[str]:
        """Every delivery's end: "acked", or the exception's name; each within the bound."""
        async with asyncio.timeout(LIVENESS):
            ends = await asyncio.gather(*self.deliveries, return_exceptions=True)
        return [type(e).__name__ if e is not None else "acked" for e in ends]

    def recorded_jobs(self) -> set[str]:
        return {job for job, _ in self.store.recorded}


@pytest.fixture
async def membership() -> AsyncIterator[HangingMembership]:
    membership = HangingMembership()
    yield membership
    if membership.hang is not None:
        membership.hang.over.set()


@pytest.fixture
async def trackers(membership: HangingMembership) -> AsyncIterator[tuple[Tracker, Tracker]]:
    made = (Tracker(membership, "a"), Tracker(membership, "b"))
    for tracker in made:
        tracker.batcher.start()
    yield made
    for tracker in made:
        for hang in (tracker.store.hang, tracker.consumers.hang):
            if hang is not None:
                hang.over.set()  # let the deaf calls end with the test
        await tracker.stop()


async def test_a_stop_mid_release_returns_and_hands_everything_back(
    trackers: tuple[Tracker, Tracker],
) -> None:
    a, b = trackers
    await a.coordinator.start()
    moving = min(share(4, ["a", "b"])["b"])
    a.store.hang = Hang()  # the delivery in flight is never recorded
    a.deliver(moving, "in-flight")
    await until(lambda: a.store.waiting == 1)
    await b.coordinator.start()
    await until(lambda: a.ingestor.paused(moving))  # mid-release: waiting for that delivery
    a.deliver(moving, "held")  # behind the pause
    await until(lambda: len(a.ingestor._held.get(moving, ())) == 1)

    await a.stop()

    assert a.consumers.subscribed == set()
    assert await a.outcomes() == ["DeliveryAbandoned", "DeliveryAbandoned"]
    assert a.acked == [] and a.store.recorded == []


async def test_a_stop_with_held_deliveries_returns_and_acks_only_what_it_recorded(
    trackers: tuple[Tracker, Tracker],
) -> None:
    a, _ = trackers
    await a.coordinator.start()
    a.ingestor.pause(0)  # at a ring barrier
    a.deliver(0, "held-1")
    a.deliver(0, "held-2")
    a.deliver(1, "flowing")
    await until(lambda: len(a.ingestor._held.get(0, ())) == 2 and a.acked == ["flowing"])

    await a.stop()

    assert await a.outcomes() == ["DeliveryAbandoned", "DeliveryAbandoned", "acked"]
    assert a.store.recorded == [("flowing", "submitted")]
    assert set(a.acked) <= a.recorded_jobs()


@pytest.mark.parametrize("deaf", [False, True], ids=["cancellable", "deaf-to-cancellation"])
async def test_a_stop_with_the_store_and_broker_hanging_returns(
    trackers: tuple[Tracker, Tracker], membership: HangingMembership, deaf: bool
) -> None:
    a, _ = trackers
    await a.coordinator.start()
    a.store.hang = Hang(deaf=deaf)
    a.deliver(2, "in-flight")
    await until(lambda: a.store.waiting == 1)
    membership.hang = Hang(deaf=deaf)  # beats and the leave hang too
    a.consumers.hang = Hang(deaf=deaf)  # and so does closing the connections
    await until(lambda: membership.hang is not None and membership.hang.calls > 0)

    await a.stop()

    assert await a.outcomes() == ["DeliveryAbandoned"]
    assert a.acked == [] and a.store.recorded == []
    assert a.consumers.hang.calls == 4, "every partition's connection was closed at once"


@pytest.mark.parametrize("deaf", [False, True], ids=["cancellable", "deaf-to-cancellation"])
async def test_a_batcher_stop_with_a_batch_in_flight_abandons_it_and_what_queued(
    deaf: bool,
) -> None:
    store = Store()
    store.hang = Hang(deaf=deaf)
    batcher = Batcher(store, Health(), max_size=1, stop_timeout=0.5)
    batcher.start()
    submitted_ = [asyncio.create_task(batcher.submit(submitted(f"job-{i}"))) for i in range(3)]
    await until(lambda: store.waiting == 1)  # job-0 in flight, the others queued

    await asyncio.wait_for(batcher.stop(), LIVENESS)

    ends = await asyncio.wait_for(asyncio.gather(*submitted_, return_exceptions=True), LIVENESS)
    assert [type(e) for e in ends] == [DeliveryAbandoned] * 3
    with pytest.raises(DeliveryAbandoned):
        await asyncio.wait_for(batcher.submit(submitted("job-late")), LIVENESS)
    store.hang.over.set()
    assert store.recorded in ([], [("job-0", "submitted")])  # a deaf call may still finish


async def test_a_stop_as_the_membership_changes_returns(
    trackers: tuple[Tracker, Tracker],
) -> None:
    """Issue 10 item 7: a heartbeat saw another tracker come or go just before the stop."""
    a, _ = trackers
    await a.coordinator.start()
    await asyncio.sleep(0)
    loops = list(a.coordinator._tasks)
    a.coordinator._wake.set()  # what a heartbeat that saw the live list change does
    await a.stop()
    assert a.consumers.subscribed == set()
    assert all(loop.done() for loop in loops), "its loops ended, none left running"


async def test_a_batcher_stop_as_an_event_arrives_returns() -> None:
    """The same in the batcher: an event arrives while it lingers for more, then the stop."""
    store = Store()
    batcher = Batcher(store, Health(), max_wait=5.0, max_linger=5.0)
    batcher.start()
    first = asyncio.create_task(batcher.submit(submitted("job-1")))
    await asyncio.sleep(0)  # job-1 queued
    assert not batcher._queue.empty()
    await until(lambda: batcher._queue.empty())  # collected: lingering for more
    second = asyncio.create_task(batcher.submit(submitted("job-2")))
    await asyncio.sleep(0)  # job-2 queued: the batcher's wait for it completes...
    running = batcher._task
    assert running is not None
    await asyncio.wait_for(batcher.stop(), LIVENESS)  # ...as the stop cancels it
    assert running.done(), "the batcher's loop ended, not left running"
    ends = await asyncio.wait_for(asyncio.gather(first, second, return_exceptions=True), 10)
    assert [type(e) for e in ends] == [DeliveryAbandoned] * 2
    assert store.recorded == []

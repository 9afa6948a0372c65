"""Sharing partitions among trackers (app/services/partitions.py): the pure assignment and the
coordinator, on the in-memory membership and a fake for the broker side."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.adapters.memory_store import InMemoryMembership
from app.domain.events import JobEvent
from app.ports import ProjectionUnavailable
from app.services.batcher import Batcher, DeliveryAbandoned
from app.services.health import Health
from app.services.ingest import Ingestor
from app.services.partitions import PartitionCoordinator, share
from tests.clock_fakes import ManualClock
from tests.unit.test_ring_keeper import Publisher, Recorder, until
from tests.unit.test_tracking_service import submitted

names = st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=12)


@given(partitions=st.integers(1, 64), members=names)
def test_every_partition_has_one_owner_and_shares_differ_by_at_most_one(
    partitions: int, members: list[str]
) -> None:
    owners = share(partitions, members)
    assert set(owners) == set(members)
    taken = [p for parts in owners.values() for p in parts]
    assert sorted(taken) == list(range(partitions))
    sizes = [len(parts) for parts in owners.values()]
    assert max(sizes) - min(sizes) <= 1


@given(partitions=st.integers(1, 64), members=names, data=st.data())
def test_every_tracker_computes_the_same_shares(
    partitions: int, members: list[str], data: st.DataObject
) -> None:
    shuffled = data.draw(st.permutations(members))
    assert share(partitions, shuffled) == share(partitions, members)
    assert share(partitions, [*members, *members]) == share(partitions, members)


def test_no_members_no_shares() -> None:
    assert share(4, []) == {}


def test_shares_are_stable_across_processes() -> None:
    """A stable hash, not Python's salted hash(): another process computes the same."""
    members = ["tracker-a", "tracker-b", "tracker-c"]
    code = (
        "from app.services.partitions import share; "
        f"print(sorted((m, sorted(p)) for m, p in share(16, {members!r}).items()))"
    )
    seen = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2", "3")
    }
    here = sorted((m, sorted(p)) for m, p in share(16, members).items())
    assert seen == {f"{here}\n"}


class Consumers:
    """PartitionConsumers for one tracker; ``failing`` makes release fail."""

    def __init__(self) -> None:
        self.subscribed: set[int] = set()
        self.calls: list[tuple[str, int]] = []
        self.failing = False

    def consuming(self) -> set[int]:
        return set(self.subscribed)

    async def consume(self, partition: int) -> None:
        self.calls.append(("consume", partition))
        self.subscribed.add(partition)

    async def release(self, partition: int) -> None:
        self.calls.append(("release", partition))
        if self.failing:
            raise RuntimeError("broker said no")
        self.subscribed.discard(partition)


class FlakyMembership(InMemoryMembership):
    def __init__(self, clock: ManualClock) -> None:
        super().__init__(clock.seconds)
        self.down = False

    async def beat(self, member: str, ttl: float) -> list[str]:
        if self.down:
            raise ProjectionUnavailable("database down")
        return await super().beat(member, ttl)


class Store(Recorder):
    """The batcher's store; ``waiting`` counts the record calls held at a closed ``open``."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = 0

    async def __call__(self, events: Sequence[JobEvent]) -> None:
        self.waiting += 1
        try:
            await super().__call__(events)
        finally:
            self.waiting -= 1


BEAT = 0.05


class Node:
    """One tracker: its coordinator, ingestor and what it recorded, on a clock the test moves."""

    def __init__(
        self, membership: InMemoryMembership, name: str, clock: ManualClock, partitions: int = 4
    ) -> None:
        self.clock = clock
        self.recorder = Store()
        self.batcher = Batcher(self.recorder, Health(), max_wait=0.001)
        self.ingestor = Ingestor(self.batcher, Publisher())
        self.consumers = Consumers()
        self.coordinator = PartitionCoordinator(
            membership,
            self.consumers,
            self.ingestor,
            partitions,
            name,
            clock,
            clock.sleep,
            ttl=0.5,
            beat_every=BEAT,
        )
        self.acked: list[str] = []

    async def start(self) -> None:
        """``coordinator.start``, moving the clock over the beat it waits before taking."""
        starting = asyncio.create_task(self.coordinator.start())
        await self.clock.advance(BEAT)
        await asyncio.wait_for(starting, 10)

    async def deliver(self, partition: int, event: JobEvent) -> None:
        """What the worker's handler does with one delivery: acknowledged once accepted."""
        with self.ingestor.delivery(partition):
            await self.ingestor.accept(event.model_dump_json().encode(), partition=partition)
        self.acked.append(event.job_id)

    def held(self, partition: int) -> int:
        return len(self.ingestor._held.get(partition, ()))


async def start_together(*nodes: Node) -> None:
    starting = [asyncio.create_task(n.coordinator.start()) for n in nodes]
    await nodes[0].clock.advance(BEAT)
    await asyncio.wait_for(asyncio.gather(*starting), 10)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def nodes(clock: ManualClock) -> Sequence[Node]:
    membership = FlakyMembership(clock)
    made = [Node(membership, name, clock) for name in ("a", "b", "c")]
    for node in made:
        node.batcher.start()
    yield made
    for node in made:  # bounded whatever a test left behind (issue 10): stops never wait
        stopping = asyncio.create_task(node.coordinator.stop())
        async with asyncio.timeout(10):
            while not stopping.done():
                await clock.advance(0.5)
        await stopping
        await asyncio.wait_for(node.batcher.stop(), 10)


async def test_trackers_split_the_partitions_and_take_over_a_gone_one(
    nodes: Sequence[Node], clock: ManualClock
) -> None:
    a, b, c = nodes
    await a.start()
    assert a.coordinator.owned() == {0, 1, 2, 3}, "alone, it consumes everything"
    await start_together(b, c)
    await clock.advance(4 * BEAT)  # every tracker beat and saw the others since
    owned = [n.coordinator.owned() for n in nodes]
    assert sorted(p for o in owned for p in o) == [0, 1, 2, 3]
    assert set(map(frozenset, owned)) == set(share(4, ["a", "b", "c"]).values())
    assert a.coordinator.moves == 2, "a let go of what b and c own"

    await c.coordinator.stop()  # a clean stop: it leaves, the others take its share at once
    assert c.consumers.subscribed == set()
    await clock.advance(2 * BEAT)
    assert a.coordinator.owned() | b.coordinator.owned() == {0, 1, 2, 3}

    b.coordinator._tasks[0].cancel()  # b stops beating (as if frozen): gone after its ttl
    await clock.advance(b.coordinator.ttl + 2 * BEAT)
    assert a.coordinator.owned() == {0, 1, 2, 3}
    assert a.coordinator.live == ["a"]


async def test_a_partition_is_released_only_once_its_deliveries_are_recorded(
    nodes: Sequence[Node], clock: ManualClock
) -> None:
    a, b, _ = nodes
    await a.start()
    moving = min(share(4, ["a", "b"])["b"])
    a.recorder.open.clear()  # the store is slow: a delivery stays in flight
    first = asyncio.create_task(a.deliver(moving, submitted("job-1")))
    await until(lambda: a.recorder.waiting == 1)
    await b.start()
    await clock.advance(BEAT)
    assert a.ingestor.paused(moving), "the hand-over began"
    await clock.advance(100 * BEAT)  # 100 beats, 33 rebalances: every chance to let go early
    assert moving in a.consumers.subscribed, "not released while a delivery is in flight"
    later = asyncio.create_task(a.deliver(moving, submitted("job-2")))  # behind the pause
    await until(lambda: a.held(moving) == 1)
    a.recorder.open.set()
    await asyncio.wait_for(first, 10)
    await until(lambda: moving not in a.coordinator.owned())  # no clock needed: it was waiting
    with pytest.raises(DeliveryAbandoned):
        await later  # held, never recorded here: the broker hands it to b
    assert a.recorder.recorded == [("job-1", "submitted")]
    assert a.acked == ["job-1"]
    assert ("release", moving) in a.consumers.calls
    assert not a.ingestor.paused(moving)


async def test_a_partition_at_a_ring_barrier_moves_once_the_barrier_is_over(
    nodes: Sequence[Node], clock: ManualClock
) -> None:
    a, b, _ = nodes
    await a.start()
    moving = min(share(4, ["a", "b"])["b"])
    a.ingestor.pause(moving)  # what the ring keeper does at a marker
    await b.start()
    await clock.advance(100 * BEAT)  # 33 rebalances, each finding it at the barrier
    assert moving in a.coordinator.owned()
    assert ("release", moving) not in a.consumers.calls
    a.ingestor.resume(moving)  # the barrier opened
    await clock.advance(3 * BEAT)  # the next retry
    assert moving not in a.coordinator.owned()


async def test_a_failed_release_keeps_consuming_as_before(
    nodes: Sequence[Node], clock: ManualClock
) -> None:
    a, b, _ = nodes
    await a.start()
    a.consumers.failing = True
    await b.start()
    await clock.advance(BEAT)
    assert any(call[0] == "release" for call in a.consumers.calls)
    assert a.coordinator.owned() == {0, 1, 2, 3}
    assert not any(a.ingestor.paused(p) for p in range(4)), "resumed, not left paused"
    a.consumers.failing = False
    await clock.advance(3 * BEAT)  # the next retry
    assert a.coordinator.owned() == share(4, ["a", "b"])["a"]


async def test_with_the_store_down_a_tracker_keeps_what_it_has(
    nodes: Sequence[Node], clock: ManualClock
) -> None:
    a, _, _ = nodes
    membership = a.coordinator.membership
    assert isinstance(membership, FlakyMembership)
    membership.down = True
    await a.start()
    assert a.coordinator.owned() == set(), "it cannot know its share yet"
    membership.down = False
    await clock.advance(BEAT)
    assert a.coordinator.owned() == {0, 1, 2, 3}
    membership.down = True
    await clock.advance(10 * a.coordinator.ttl)  # 100 failed beats, 33 rebalances
    assert a.coordinator.owned() == {0, 1, 2, 3}


async def test_a_stop_does_not_wait_forever_for_a_stuck_store(
    nodes: Sequence[Node], clock: ManualClock
) -> None:
    a, _, _ = nodes
    await a.start()
    a.recorder.open.clear()  # the store hangs: this delivery never gets recorded
    stuck = asyncio.create_task(a.deliver(0, submitted("job-1")))
    await until(lambda: a.recorder.waiting == 1)
    stopping = asyncio.create_task(a.coordinator.stop())
    await clock.advance(a.coordinator.stop_grace / 2)
    assert not stopping.done(), "the delivery in flight gets its grace"
    await clock.advance(a.coordinator.stop_grace / 2)
    await asyncio.wait_for(stopping, 10)
    assert a.consumers.subscribed == set(), "released anyway: the broker redelivers it"
    await a.batcher.stop()
    with pytest.raises(DeliveryAbandoned):
        await stuck
    assert a.recorder.recorded == []
    assert a.acked == []


async def test_a_held_delivery_whose_handler_is_cancelled_is_cancelled_not_abandoned(
    nodes: Sequence[Node],
) -> None:
    a, _, _ = nodes
    a.ingestor.pause(0)
    held = asyncio.create_task(a.deliver(0, submitted("job-1")))
    await until(lambda: a.held(0) == 1)
    held.cancel()  # the tracker stops: its handlers are cancelled
    with pytest.raises(asyncio.CancelledError):
        await held
    a.ingestor.resume(0)
    await asyncio.wait_for(a.batcher.flush(), 10)  # all that was handed on is recorded
    assert a.recorder.recorded == []

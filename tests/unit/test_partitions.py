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
from app.services.ingest import Batcher, DeliveryAbandoned, Health, Ingestor
from app.services.partitions import PartitionCoordinator, share
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
    def __init__(self) -> None:
        super().__init__()
        self.down = False

    async def beat(self, member: str, ttl: float) -> list[str]:
        if self.down:
            raise ProjectionUnavailable("database down")
        return await super().beat(member, ttl)


class Node:
    """One tracker: its coordinator, ingestor and what it recorded."""

    def __init__(self, membership: InMemoryMembership, name: str, partitions: int = 4) -> None:
        self.recorder = Recorder()
        self.batcher = Batcher(self.recorder, Health(), max_wait=0.001)
        self.ingestor = Ingestor(self.batcher, Publisher())
        self.consumers = Consumers()
        self.coordinator = PartitionCoordinator(
            membership,
            self.consumers,
            self.ingestor,
            partitions,
            name,
            ttl=0.5,
            beat_every=0.05,
        )

    async def deliver(self, partition: int, event: JobEvent) -> None:
        """What the worker's handler does with one delivery."""
        with self.ingestor.delivery(partition):
            await self.ingestor.accept(event.model_dump_json().encode(), partition=partition)


@pytest.fixture
async def nodes() -> Sequence[Node]:
    membership = FlakyMembership()
    made = [Node(membership, name) for name in ("a", "b", "c")]
    for node in made:
        node.batcher.start()
    yield made
    for node in made:
        await node.coordinator.stop()
        await node.batcher.stop()


async def test_trackers_split_the_partitions_and_take_over_a_gone_one(
    nodes: Sequence[Node],
) -> None:
    a, b, c = nodes
    await a.coordinator.start()
    assert a.coordinator.owned() == {0, 1, 2, 3}, "alone, it consumes everything"
    await b.coordinator.start()
    await c.coordinator.start()

    def split() -> bool:
        owned = [n.coordinator.owned() for n in nodes]
        return sorted(p for o in owned for p in o) == [0, 1, 2, 3] and all(owned)

    await until(split)
    assert {frozenset(n.coordinator.owned()) for n in nodes} == set(
        share(4, ["a", "b", "c"]).values()
    )
    assert a.coordinator.moves == 2, "a let go of what b and c own"

    await c.coordinator.stop()  # a clean stop: it leaves, the others take its share at once
    assert c.consumers.subscribed == set()
    await until(lambda: a.coordinator.owned() | b.coordinator.owned() == {0, 1, 2, 3})

    b.coordinator._tasks[0].cancel()  # b stops beating (as if frozen): gone after its ttl
    await until(lambda: a.coordinator.owned() == {0, 1, 2, 3})
    assert a.coordinator.live == ["a"]


async def test_a_partition_is_released_only_once_its_deliveries_are_recorded(
    nodes: Sequence[Node],
) -> None:
    a, b, _ = nodes
    await a.coordinator.start()
    share_of_b = share(4, ["a", "b"])["b"]
    moving = min(share_of_b)
    a.recorder.open.clear()  # the store is slow: a delivery stays in flight
    first = asyncio.create_task(a.deliver(moving, submitted("job-1")))
    await asyncio.sleep(0.05)
    await b.coordinator.start()
    await asyncio.sleep(0.3)
    assert moving in a.consumers.subscribed, "not released while a delivery is in flight"
    later = asyncio.create_task(a.deliver(moving, submitted("job-2")))  # behind the pause
    await asyncio.sleep(0.05)
    a.recorder.open.set()
    await first
    await until(lambda: moving not in a.coordinator.owned())
    with pytest.raises(DeliveryAbandoned):
        await later  # held, never recorded here: the broker hands it to b
    assert a.recorder.recorded == [("job-1", "submitted")]
    assert ("release", moving) in a.consumers.calls
    assert not a.ingestor.paused(moving)


async def test_a_partition_at_a_ring_barrier_moves_once_the_barrier_is_over(
    nodes: Sequence[Node],
) -> None:
    a, b, _ = nodes
    await a.coordinator.start()
    moving = min(share(4, ["a", "b"])["b"])
    a.ingestor.pause(moving)  # what the ring keeper does at a marker
    await b.coordinator.start()
    await asyncio.sleep(0.3)
    assert moving in a.coordinator.owned()
    a.ingestor.resume(moving)  # the barrier opened
    await until(lambda: moving not in a.coordinator.owned())


async def test_a_failed_release_keeps_consuming_as_before(nodes: Sequence[Node]) -> None:
    a, b, _ = nodes
    await a.coordinator.start()
    a.consumers.failing = True
    await b.coordinator.start()
    await until(lambda: any(call[0] == "release" for call in a.consumers.calls))
    assert a.coordinator.owned() == {0, 1, 2, 3}
    assert not any(a.ingestor.paused(p) for p in range(4)), "resumed, not left paused"
    a.consumers.failing = False
    await until(lambda: a.coordinator.owned() == share(4, ["a", "b"])["a"])


async def test_with_the_store_down_a_tracker_keeps_what_it_has(nodes: Sequence[Node]) -> None:
    a, _, _ = nodes
    membership = a.coordinator.membership
    assert isinstance(membership, FlakyMembership)
    membership.down = True
    await a.coordinator.start()
    assert a.coordinator.owned() == set(), "it cannot know its share yet"
    membership.down = False
    await until(lambda: a.coordinator.owned() == {0, 1, 2, 3})
    membership.down = True
    await asyncio.sleep(0.3)
    assert a.coordinator.owned() == {0, 1, 2, 3}


async def test_a_stop_does_not_wait_forever_for_a_stuck_store(nodes: Sequence[Node]) -> None:
    a, _, _ = nodes
    await a.coordinator.start()
    a.coordinator.stop_grace = 0.2
    a.recorder.open.clear()  # the store hangs: this delivery never gets recorded
    stuck = asyncio.create_task(a.deliver(0, submitted("job-1")))
    await asyncio.sleep(0.05)
    async with asyncio.timeout(2):
        await a.coordinator.stop()
    assert a.consumers.subscribed == set(), "released anyway: the broker redelivers it"
    assert a.recorder.recorded == []
    stuck.cancel()


async def test_a_held_delivery_whose_handler_is_cancelled_is_cancelled_not_abandoned(
    nodes: Sequence[Node],
) -> None:
    a, _, _ = nodes
    a.ingestor.pause(0)
    held = asyncio.create_task(a.deliver(0, submitted("job-1")))
    await asyncio.sleep(0.02)
    held.cancel()  # the tracker stops: its handlers are cancelled
    with pytest.raises(asyncio.CancelledError):
        await held
    a.ingestor.resume(0)
    await asyncio.sleep(0.05)
    assert a.recorder.recorded == []

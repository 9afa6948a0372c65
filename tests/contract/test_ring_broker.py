"""RingBroker contract: RabbitRing on a real RabbitMQ vhost and the in-memory fake used by unit tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aio_pika
import pytest

from app.adapters.rabbit import (
    BARRIER_HEADER,
    EVENTS_EXCHANGE,
    JOB_ID_HEADER,
    declare_topology,
    partition_queue,
)
from app.adapters.rabbit_ring import RabbitRing
from app.ports import PublishFailed, RingBroker, Unrouted
from tests.ring_fakes import MemoryRingBroker

PARTITIONS = 3


@dataclass
class Rig:
    broker: RingBroker
    other: RingBroker
    """A second handle on the same broker (another tracker)."""
    send: Callable[[bytes, bool], Awaitable[None]]
    """Publish an event as a producer does (routing key job.x, with or without the header)."""
    markers: Callable[[], Awaitable[list[list[str]]]]
    """The barrier markers in each partition queue, oldest first."""


async def _memory_rig() -> Rig:
    fake = MemoryRingBroker(PARTITIONS)

    async def send(body: bytes, keyed: bool) -> None:
        if fake.ring:
            raise AssertionError("the contract tests send only while there is no ring")
        fake.unrouted.append((body, keyed))

    async def markers() -> list[list[str]]:
        return [list(q) for q in fake.markers]

    return Rig(fake, fake, send, markers)


async def _rabbit_rig(url: str, connection: aio_pika.abc.AbstractConnection) -> Rig:
    channel = await connection.channel(publisher_confirms=True)
    await declare_topology(channel, PARTITIONS, ring=False)
    events = await channel.get_exchange(EVENTS_EXCHANGE)

    async def send(body: bytes, keyed: bool) -> None:
        headers: dict[str, Any] = {JOB_ID_HEADER: "job-1"} if keyed else {}
        await events.publish(aio_pika.Message(body, headers=headers), routing_key="job.x")

    async def markers() -> list[list[str]]:
        found: list[list[str]] = []
        for index in range(PARTITIONS):
            queue = await channel.get_queue(partition_queue(index))
            seen: list[str] = []
            async with queue.iterator(timeout=1) as messages:
                try:
                    async for message in messages:
                        seen.append(str((message.headers or {})[BARRIER_HEADER]))
                        await message.ack()
                except TimeoutError:
                    pass
            found.append(seen)
        return found

    return Rig(
        RabbitRing(url, partitions=PARTITIONS),
        RabbitRing(url, partitions=PARTITIONS),
        send,
        markers,
    )


@pytest.fixture(params=["memory", "rabbitmq"])
async def rig(request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    if request.param == "memory":
        yield await _memory_rig()
        return
    url = request.getfixturevalue("rabbit_url")
    connection = await aio_pika.connect(url)
    try:
        yield await _rabbit_rig(url, connection)
    finally:
        await connection.close()


async def test_no_ring_until_the_leader_builds_it(rig: Rig) -> None:
    assert await rig.broker.ring_exists() is False
    async with rig.broker.leadership() as leader:
        assert leader
        await rig.broker.build_ring()
        await rig.broker.build_ring()  # building it again is harmless
    assert await rig.broker.ring_exists() is True
    assert await rig.other.ring_exists() is True


async def test_one_leader_at_a_time(rig: Rig) -> None:
    async with rig.broker.leadership() as first, rig.other.leadership() as second:
        assert (first, second) == (True, False)
    async with rig.other.leadership() as again:
        assert again, "the lock is free once its holder leaves"


async def test_barrier_steps_need_the_lock(rig: Rig) -> None:
    with pytest.raises(PublishFailed):
        await rig.broker.place_markers("0" * 32)
    with pytest.raises(PublishFailed):
        await rig.broker.take_unrouted(10)


async def test_markers_go_to_the_tail_of_every_partition(rig: Rig) -> None:
    async with rig.broker.leadership():
        await rig.broker.place_markers("a" * 32)
        await rig.broker.place_markers("b" * 32)
    assert await rig.markers() == [["a" * 32, "b" * 32]] * PARTITIONS


async def _take(broker: RingBroker, count: int, limit: int = 256) -> list[Unrouted]:
    """Take ``count`` messages (batches may come short), acknowledging none."""
    taken: list[Unrouted] = []
    while len(taken) < count:
        batch = await broker.take_unrouted(min(limit, count - len(taken)))
        assert batch, f"the queue ran dry after {len(taken)} of {count}"
        taken += batch
    return taken


async def test_unrouted_events_come_in_order_and_stay_until_acknowledged(rig: Rig) -> None:
    # More than a prefetch window, and more than RabbitMQ keeps in an ordered map.
    bodies = [f"event-{n}".encode() for n in range(300)]
    for n, body in enumerate(bodies):
        await rig.send(body, n % 2 == 0)
    async with rig.broker.leadership():
        first = await _take(rig.broker, 40)
        assert [(m.body, m.keyed) for m in first] == [
            (b, n % 2 == 0) for n, b in enumerate(bodies[:40])
        ]
        await rig.broker.ack_unrouted(first)
        rest = await _take(rig.broker, 260)
        assert [m.body for m in rest] == bodies[40:]
    # The leadership ended with messages taken and not acknowledged: they come back, in order.
    async with rig.other.leadership():
        left = await _take(rig.other, 200)
        assert [m.body for m in left] == bodies[40:240]
        await rig.other.ack_unrouted(left)
        rest = await _take(rig.other, 60)
        assert [m.body for m in rest] == bodies[240:]
        await rig.other.ack_unrouted(rest)
        assert await rig.other.take_unrouted(10) == []
        assert await rig.other.take_unrouted(10) == [], "and stays empty"
    async with rig.broker.leadership():
        assert await rig.broker.take_unrouted(10) == [], "nothing left behind, sentinels included"

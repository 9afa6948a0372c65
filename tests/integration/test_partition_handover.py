"""A partition changes hands in order: RabbitPartitionConsumers on a real RabbitMQ vhost.

What the partition coordinator relies on (app/services/partitions.py): a second consumer of a
partition waits while the first holds it (single active consumer), and releasing (closing the
connection) hands the first one's unacknowledged deliveries to the second, in queue order,
before anything newer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from app.adapters import rabbit
from app.adapters.rabbit_partitions import Handler, RabbitPartitionConsumers
from tests import servers
from tests.polling import until

MESSAGES = 300
ACKED_BY_FIRST = 100


class Consumer:
    """A partition subscriber that records what it gets and acks only what ``ack`` allows."""

    def __init__(self, ack: Callable[[int], bool]) -> None:
        self.ack = ack
        self.got: list[int] = []
        self.holding: list[asyncio.Future[None]] = []

    def handler(self, index: int) -> Handler:
        async def handle(raw: AbstractIncomingMessage) -> None:
            number = int(raw.body)
            self.got.append(number)
            if self.ack(number):
                await raw.ack()
                return
            held = asyncio.get_running_loop().create_future()
            self.holding.append(held)
            await held  # holds the delivery unacknowledged until cancelled

        return handle

    def cancel(self) -> None:
        for held in self.holding:
            held.cancel()


async def _publish(url: str, numbers: range) -> None:
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        await rabbit.declare_topology(channel, 1, ring=False)
        for number in numbers:
            await channel.default_exchange.publish(
                aio_pika.Message(str(number).encode()), routing_key=rabbit.partition_queue(0)
            )
    finally:
        await connection.close()


async def test_a_released_partition_goes_to_the_waiting_consumer_in_order(
    rabbit_url: str,
) -> None:
    await _publish(rabbit_url, range(MESSAGES))
    first = Consumer(ack=lambda n: n < ACKED_BY_FIRST)
    second = Consumer(ack=lambda n: True)
    a = RabbitPartitionConsumers(rabbit_url, first.handler, prefetch=50, name="first")
    b = RabbitPartitionConsumers(rabbit_url, second.handler, prefetch=50, name="second")
    try:
        await a.consume(0)
        await a.consume(0)  # again: a no-op, not a second subscription
        await until(
            lambda: len(first.got) > ACKED_BY_FIRST, "the first to hold deliveries", every=0.02
        )
        await b.consume(0)
        assert a.consuming() == b.consuming() == {0}
        queue = rabbit.partition_queue(0)
        # The broker itself says the second waits (its consumer registered, not active): a
        # waiting consumer is given nothing, so its empty list is certain, not a guess that a
        # delivery would have come within some time.
        await until(
            lambda: servers.waiting_consumers(rabbit_url) == {queue: ["second partition 0"]},
            "the management API to list the second consumer as waiting",
        )
        assert second.got == [], "single active consumer: the second waits"
        assert servers.active_consumers(rabbit_url) == {queue: ["first partition 0"]}

        held = len(first.got) - ACKED_BY_FIRST
        await a.release(0)
        assert a.consuming() == set()
        await until(
            lambda: len(second.got) >= MESSAGES - ACKED_BY_FIRST, "the hand-over", every=0.02
        )
        assert held > 0
        assert second.got == list(range(ACKED_BY_FIRST, MESSAGES)), (
            "the held deliveries first, in order, then the rest; nothing acked comes back"
        )

        # A partition released and consumed again gets a fresh connection that works.
        await b.release(0)
        await a.consume(0)
        first.ack = lambda n: True
        await _publish(rabbit_url, range(MESSAGES, MESSAGES + 10))
        await until(lambda: first.got[-10:] == list(range(MESSAGES, MESSAGES + 10)), "more")
        assert second.got == list(range(ACKED_BY_FIRST, MESSAGES))
    finally:
        await a.close()
        await b.close()
        first.cancel()
        second.cancel()

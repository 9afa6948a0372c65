"""The FastStream API a partition hand-over stands on, against a real RabbitMQ.

RabbitPartitionConsumers (app/adapters/rabbit_partitions.py) releases a partition by closing
its broker's AMQP connection itself, never by stopping the broker first (which cancels the
consumer, and RabbitMQ then activates the next one while the old one still holds deliveries).
It gets that connection from ``RabbitBroker.connect()``. If a FastStream upgrade changes what
that returns, these tests fail, and so does every subscription (loudly, at start-up).
"""

from __future__ import annotations

import asyncio
from importlib.metadata import version

import pytest
from aio_pika.abc import AbstractRobustConnection
from faststream.rabbit import RabbitBroker, RabbitQueue

from app.adapters.rabbit_partitions import RabbitPartitionConsumers, checked_connection
from tests import servers
from tests.polling import until

pytestmark = pytest.mark.integration

QUEUE = "jobtrail.test.faststream-connection"


async def _consumers_are(rabbit_url: str, count: int) -> bool:
    """Polled: the management API reports the broker's view (a little late), no event tells us."""
    found = await asyncio.to_thread(servers.active_consumers, rabbit_url)
    return len(found.get(QUEUE, [])) == count


async def test_connect_gives_the_one_aio_pika_connection_the_subscribers_use(
    rabbit_url: str,
) -> None:
    broker = RabbitBroker(rabbit_url, apply_types=False)
    got: asyncio.Queue[bytes] = asyncio.Queue()

    @broker.subscriber(RabbitQueue(QUEUE, auto_delete=True))
    async def handle(body: bytes) -> None:
        await got.put(body)

    connection = await broker.connect()
    try:
        assert isinstance(connection, AbstractRobustConnection), type(connection)
        await broker.start()
        assert await broker.connect() is connection, "start() and later calls reuse it"
        await broker.publish(b"ping", QUEUE)
        assert await asyncio.wait_for(got.get(), 20) == b"ping"
        await until(lambda: _consumers_are(rabbit_url, 1), "the subscriber to consume", within=20)
        await connection.close()  # what a partition release does, before broker.stop()
        assert connection.is_closed
        await until(lambda: _consumers_are(rabbit_url, 0), "its consumer to go with it", within=20)
    finally:
        await broker.stop()


async def test_consuming_keeps_the_connection_it_will_close(rabbit_url: str) -> None:
    subscribed: list[RabbitBroker] = []
    consumers = RabbitPartitionConsumers(rabbit_url, lambda b, _i: subscribed.append(b))
    try:
        await consumers.consume(0)
        (broker,) = subscribed
        connection = await broker.connect()
        assert not connection.is_closed
        await consumers.release(0)
        assert connection.is_closed and consumers.consuming() == set()
    finally:
        await consumers.close()


def test_anything_but_an_aio_pika_connection_is_refused_naming_faststream() -> None:
    with pytest.raises(RuntimeError) as refused:
        checked_connection(object())
    message = str(refused.value)
    assert message.startswith(f"FastStream {version('faststream')}: RabbitBroker.connect()")
    assert "not an aio-pika connection" in message

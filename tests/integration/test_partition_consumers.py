"""RabbitPartitionConsumers (app/adapters/rabbit_partitions.py) against a real RabbitMQ.

The partition queues are consumed with aio-pika's robust objects, not a FastStream subscriber:
one named connection per partition, released by closing it, a handler that acknowledges
without waiting (the worker's fast path), and a connection the broker drops reopened with its
consumer, as FastStream's subscriber did.
"""

from __future__ import annotations

import asyncio
import urllib.parse

import httpx
from aio_pika.abc import AbstractIncomingMessage

from app.adapters import rabbit
from app.adapters.rabbit_acks import BatchAcks
from app.adapters.rabbit_partitions import RabbitPartitionConsumers
from tests import servers
from tests.integration.test_partition_handover import _publish
from tests.polling import until

QUEUE = rabbit.partition_queue(0)


async def _consumers(url: str) -> dict[str, list[str]]:
    return await asyncio.to_thread(servers.active_consumers, url)


async def test_each_delivery_is_handled_and_a_release_closes_the_connection(
    rabbit_url: str,
) -> None:
    await _publish(rabbit_url, range(30))
    got: list[int] = []
    acks = BatchAcks()

    async def handle(message: AbstractIncomingMessage) -> None:  # never waits: the fast path's
        got.append(int(message.body))
        acks.finish(message, ack=True)  # acknowledged later, by one multiple-ack

    consumers = RabbitPartitionConsumers(rabbit_url, lambda _i: handle, prefetch=8, name="plain")
    try:
        await consumers.consume(0)
        await consumers.consume(0)  # again: a no-op, not a second connection
        await until(lambda: len(got) >= 30, "every delivery", every=0.02)
        assert got == list(range(30))
        await until(lambda: servers.all_acknowledged(rabbit_url, [QUEUE]), "all acknowledged")

        async def listed() -> bool:  # the management API lists consumers a little late
            return await _consumers(rabbit_url) == {QUEUE: ["plain partition 0"]}

        await until(listed, "the management API to list its one named consumer", within=30)
        await consumers.release(0)
        assert consumers.consuming() == set()

        async def gone() -> bool:
            return QUEUE not in await _consumers(rabbit_url)

        await until(gone, "its consumer to go with its connection", within=20)
    finally:
        await consumers.close()


async def test_a_connection_the_broker_closes_is_reopened_with_its_consumer(
    rabbit_url: str,
) -> None:
    got: list[int] = []

    async def handle(message: AbstractIncomingMessage) -> None:
        got.append(int(message.body))
        await message.ack()

    consumers = RabbitPartitionConsumers(rabbit_url, lambda _i: handle, prefetch=8, name="robust")
    try:
        await consumers.consume(0)
        await _publish(rabbit_url, range(5))
        await until(lambda: len(got) >= 5, "the first deliveries")
        await until(lambda: _drop_connection(rabbit_url, "robust partition 0"), "a drop", within=30)
        await _publish(rabbit_url, range(5, 10))
        await until(lambda: len(got) >= 10, "deliveries after the reconnection", within=60)
        assert got == list(range(10))
        assert consumers.consuming() == {0}
    finally:
        await consumers.close()


async def _drop_connection(url: str, name: str) -> bool:
    """Close the connection named ``name`` from the broker's side (management API); False while
    the API does not list it yet (it lists connections a little late)."""
    vhost = urllib.parse.quote(urllib.parse.unquote(url.rsplit("/", 1)[1]), safe="")
    async with httpx.AsyncClient(
        base_url=servers.RABBIT_API, auth=servers.RABBIT_API_AUTH, timeout=10
    ) as api:
        listed = (await api.get(f"/vhosts/{vhost}/connections")).json()
        found = [c["name"] for c in listed if c.get("user_provided_name") == name]
        if not found:
            return False
        closed = await api.delete(f"/connections/{urllib.parse.quote(found[0], safe='')}")
        assert closed.status_code == 204, closed.text
        return True

"""A tracker stopped while its store hangs, on a real RabbitMQ vhost (issue 10: bounded stops).

The coordinator and the batcher return within seconds, acknowledge nothing, and every delivery
they held goes back to the partition queue: the next consumer gets them all, in order.
"""

from __future__ import annotations

import asyncio
import json

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from app.adapters import rabbit
from app.adapters.clock import SystemClock
from app.adapters.memory_store import InMemoryMembership
from app.adapters.rabbit_partitions import Handler, RabbitPartitionConsumers
from app.services.batcher import Batcher, DeliveryAbandoned
from app.services.health import Health
from app.services.ingest import Ingestor
from app.services.partitions import PartitionCoordinator
from tests.integration.test_partition_handover import Consumer
from tests.polling import until
from tests.unit.test_bounded_stops import LIVENESS, Hang, Store
from tests.unit.test_ring_keeper import Publisher
from tests.unit.test_tracking_service import submitted

EVENTS = 40


async def _publish(url: str) -> None:
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        await rabbit.declare_topology(channel, 1, ring=False)
        for n in range(EVENTS):
            body = submitted(f"job-{n:02}").model_dump_json().encode()
            await channel.default_exchange.publish(
                aio_pika.Message(body), routing_key=rabbit.partition_queue(0)
            )
    finally:
        await connection.close()


async def test_a_stop_with_the_store_hanging_acks_nothing_and_hands_everything_back(
    rabbit_url: str,
) -> None:
    await _publish(rabbit_url)
    store = Store()
    store.hang = Hang()
    batcher = Batcher(store, Health(), max_size=8, stop_timeout=0.5)
    ingestor = Ingestor(batcher, Publisher())
    acked: list[bytes] = []

    def handler(index: int) -> Handler:
        async def handle(raw: AbstractIncomingMessage) -> None:  # as app/bootstrap/worker.py
            with ingestor.delivery(index):
                try:
                    await ingestor.accept(raw.body, partition=index)
                except DeliveryAbandoned:
                    return
            await raw.ack()
            acked.append(raw.body)

        return handle

    consumers = RabbitPartitionConsumers(rabbit_url, handler, prefetch=50, name="stopping")
    coordinator = PartitionCoordinator(
        InMemoryMembership(), consumers, ingestor, 1, "a", SystemClock(), beat_every=0.05,
        stop_grace=1.0, io_timeout=3.0,
    )  # fmt: skip
    batcher.start()
    await coordinator.start()
    await until(lambda: store.waiting == 1, "a batch stuck in the store")
    await until(lambda: batcher._queue.qsize() > 0, "more deliveries queued behind it")

    async with asyncio.timeout(LIVENESS):
        await coordinator.stop()
        await batcher.stop()
    store.hang.over.set()

    assert acked == [] and store.recorded == []
    assert consumers.consuming() == set()
    after = Consumer(ack=lambda n: True)
    reader = RabbitPartitionConsumers(rabbit_url, lambda i: _jobs(after), prefetch=50)
    try:
        await reader.consume(0)
        await until(lambda: len(after.got) >= EVENTS, "every event back in the queue")
    finally:
        await reader.close()
    assert after.got == list(range(EVENTS)), "all of them, in order, none acked"


def _jobs(consumer: Consumer) -> Handler:
    """``consumer``'s handler, seeing each job event as its number."""

    async def handle(raw: AbstractIncomingMessage) -> None:
        consumer.got.append(int(json.loads(raw.body)["job_id"].removeprefix("job-")))
        await raw.ack()

    return handle

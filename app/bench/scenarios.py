"""The measured scenarios: the bare aio-pika baseline and Jobtrail's end-to-end ingestion."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import aio_pika

from app.adapters.rabbit import (
    EVENTS_EXCHANGE,
    JOB_ID_HEADER,
    TRACKER_QUEUE_ARGS,
    declare_topology,
    partition_queue,
)
from app.bench.rabbit_setup import publish_confirmed
from app.bootstrap import build_tracking, prepare_storage
from app.domain.events import JobEvent
from app.entrypoints.worker import create_app
from app.settings import Settings

PREFETCH = 256


def encoded(events: Sequence[JobEvent]) -> list[tuple[bytes, str, dict[str, str]]]:
    return [
        (e.model_dump_json().encode(), f"job.{e.type}", {JOB_ID_HEADER: e.job_id}) for e in events
    ]


async def bare_consume_rate(
    vhost_url: str, messages: Sequence[tuple[bytes, str, dict[str, str]]]
) -> float:
    """Messages/s of bare aio-pika (prefetch 256, an ack each) on a queue like the tracker's."""
    connection = await aio_pika.connect(vhost_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        queue = await channel.declare_queue(
            "bench.baseline", durable=True, arguments=TRACKER_QUEUE_ARGS
        )
        await queue.purge()
        await publish_confirmed(
            channel, channel.default_exchange, [(b, "bench.baseline", h) for b, _, h in messages]
        )
        consumer = await connection.channel()
        await consumer.set_qos(prefetch_count=PREFETCH)
        done, seen = asyncio.Event(), 0

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal seen
            await message.ack()
            seen += 1
            if seen == len(messages):
                done.set()

        q = await consumer.get_queue("bench.baseline")
        started = time.perf_counter()
        tag = await q.consume(on_message)
        await done.wait()
        elapsed = time.perf_counter() - started
        await q.cancel(tag)
        await queue.delete(if_unused=False, if_empty=False)
        return len(messages) / elapsed
    finally:
        await connection.close()


async def jobtrail_ingest_rate(
    settings: Settings, events: Sequence[JobEvent], limit: float = 600
) -> float:
    """Events/s from subscriber start until every pre-published event is recorded and acked."""
    await prepare_storage(settings)
    connection = await aio_pika.connect(settings.rabbit_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        await declare_topology(channel, settings.partitions)
        exchange = await channel.get_exchange(EVENTS_EXCHANGE)
        await publish_confirmed(channel, exchange, encoded(events))
        await _wait_for_depth(channel, settings.partitions, len(events))
    finally:
        await connection.close()
    tracking = build_tracking(settings)
    await tracking.start()
    stream = create_app(tracking)
    started = time.perf_counter()
    await stream.start()
    try:
        deadline = started + limit
        while tracking.batcher.recorded < len(events):
            if time.perf_counter() > deadline:
                raise TimeoutError(f"only {tracking.batcher.recorded} of {len(events)} recorded")
            await asyncio.sleep(0.01)
        return len(events) / (time.perf_counter() - started)
    finally:
        await stream.stop()
        await tracking.stop()


async def _wait_for_depth(
    channel: aio_pika.abc.AbstractChannel, partitions: int, depth: int
) -> None:
    """Wait until the broker reports every published message in the partition queues."""
    for _ in range(600):
        total = 0
        for index in range(partitions):
            declared = await channel.declare_queue(partition_queue(index), passive=True)
            total += declared.declaration_result.message_count or 0
        if total >= depth:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"the partition queues never held {depth} messages")

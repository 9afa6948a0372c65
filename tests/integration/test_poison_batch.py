"""A poison event among 255 good ones in one batch, on real RabbitMQ and PostgreSQL.

The tracker runs in-process with its real parts (bootstrap, partition consumers, batcher, SQL
log and projections on PostgreSQL). PostgreSQL refuses one event: a CHECK constraint on the log
table names its job, so the refusal is the database's own (SQLSTATE 23514, an IntegrityError
that is not the log's unique-key dedupe). Before poison isolation this refusal was reported as
"log unavailable" and retried forever, stalling every partition of the process.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import aio_pika
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from app.adapters import rabbit
from app.bootstrap import build_tracking, prepare_storage
from app.bootstrap.worker import partition_coordinator
from app.settings import Settings
from tests import servers
from tests.deliveries import count_deliveries
from tests.polling import until

POISON_JOB = "poison-job"


def _event(job_id: str) -> bytes:
    return json.dumps(
        {
            "type": "submitted",
            "event_id": str(uuid.uuid4()),
            "job_id": job_id,
            "occurred_at": datetime.now(UTC).isoformat(),
            "attempt": 1,
            "source": "cloud",
            "job_type": "batch",
            "model": "m",
            "priority": "bulk",
            "tenant": "t",
            "pool": "p",
            "queue": "q",
        }
    ).encode()


async def _fill(url: str, queues: dict[str, list[bytes]]) -> None:
    """Declare the topology with its ring, then put ``queues``' bodies straight into them."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        await rabbit.declare_topology(channel, 2, ring=True)
        for queue, bodies in queues.items():
            for body in bodies:
                job_id = json.loads(body)["job_id"]
                message = aio_pika.Message(
                    body, headers={rabbit.JOB_ID_HEADER: job_id}, delivery_mode=2
                )
                await channel.default_exchange.publish(message, routing_key=queue)
    finally:
        await connection.close()


async def _drain(url: str, queue: str) -> list[aio_pika.abc.AbstractIncomingMessage]:
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        q = await channel.declare_queue(queue, passive=True)
        got = []
        while (message := await q.get(fail=False, no_ack=True)) is not None:
            got.append(message)
        return got
    finally:
        await connection.close()


async def _ready(url: str, queue: str) -> int:
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        return declared.declaration_result.message_count or 0
    finally:
        await connection.close()


async def test_a_poison_event_is_quarantined_and_its_255_batch_mates_recorded_once(
    rabbit_url: str, pg_url: str
) -> None:
    settings = Settings(
        rabbit_url=rabbit_url,
        log_url=pg_url,
        sql_url=pg_url,
        partitions=2,
        batch_wait_ms=3000,  # a long linger: a batch closes full (256), whatever the load
        member_ttl_s=2,
    )
    await prepare_storage(settings)
    engine = create_async_engine(pg_url)
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "ALTER TABLE jobtrail_events ADD CONSTRAINT no_poison "
                f"CHECK (job_id <> '{POISON_JOB}')"
            )
        )
    await engine.dispose()

    first = [_event(f"first-{n}") for n in range(255)]
    poison = _event(POISON_JOB)
    first.insert(100, poison)
    others = [_event(f"other-{n}") for n in range(300)]
    await _fill(
        rabbit_url,
        {rabbit.partition_queue(0): first, rabbit.partition_queue(1): others},
    )

    tracking = build_tracking(settings)
    deliveries: Counter[bytes] = Counter()
    batches: list[list[str]] = []
    record = tracking.batcher.record
    count_deliveries(tracking.ingestor, lambda body, _keyed: deliveries.update([body]))

    async def watching_record(events: Any) -> object:
        batches.append([e.job_id for e in events])
        return await record(events)

    tracking.batcher.record = watching_record
    await tracking.start()
    coordinator = tracking.coordinator = partition_coordinator(tracking)
    await coordinator.start()
    try:

        async def all_recorded() -> bool:
            return await tracking.readers.log.count() == 255 + 300

        await until(all_recorded, "the good events to be recorded")
        await until(
            lambda: _has(rabbit_url, rabbit.QUARANTINE_QUEUE), "the poison to be quarantined"
        )
        # Every delivery acknowledged while the tracker still consumes: none can come again,
        # so the delivery counts below are final (a redelivery loop would show in them, or
        # keep a message unacknowledged here).
        await until(lambda: _all_acknowledged(rabbit_url, 2), "every delivery acknowledged")
    finally:
        await coordinator.stop()
        await tracking.stop()

    assert await _count_log(pg_url) == 255 + 300, "every good event recorded once"
    quarantined = await _drain(rabbit_url, rabbit.QUARANTINE_QUEUE)
    assert [m.body for m in quarantined] == [poison]
    reason = quarantined[0].headers[rabbit.REASON_HEADER]
    assert isinstance(reason, str) and reason.startswith("refused_by_store: ")
    assert "no_poison" in reason, reason
    assert set(deliveries.values()) == {1}, "no message delivered twice: no redelivery loop"
    assert sum(deliveries.values()) == 256 + 300
    first_with_poison = next(b for b in batches if POISON_JOB in b)
    assert len(first_with_poison) >= 200, f"the poison came in a batch of {len(first_with_poison)}"
    assert await _ready(rabbit_url, rabbit.partition_queue(0)) == 0, "every delivery acked"
    assert await _ready(rabbit_url, rabbit.partition_queue(1)) == 0


async def _all_acknowledged(url: str, partitions: int) -> bool:
    queues = [rabbit.partition_queue(p) for p in range(partitions)]
    return await asyncio.to_thread(servers.all_acknowledged, url, queues)


async def _has(url: str, queue: str) -> bool:
    return await _ready(url, queue) > 0


async def _count_log(url: str) -> int:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return int(
                (await conn.execute(text("SELECT count(*) FROM jobtrail_events"))).scalar_one()
            )
    finally:
        await engine.dispose()

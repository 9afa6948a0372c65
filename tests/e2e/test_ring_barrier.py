"""A hash ring rebuilt in another order (as RabbitMQ 3.x does at boot) reorders no job's history.

The broker-restart fault test (tests/faults/test_broker_restart.py) shows it happen on a real
restart of a private node, where the order RabbitMQ recovers its bindings in is left to chance.
Here it is certain: the partition queues are bound to the ring in reverse order, so each of the 4
buckets of RabbitMQ's jump consistent hash lands on another queue than in the ring Jobtrail
builds (bucket b on queue 3 - b instead of b), and every job's later events go to another
partition than its submission.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import aio_pika

from app.adapters.rabbit import (
    BARRIER_HEADER,
    EVENTS_EXCHANGE,
    INTAKE_EXCHANGE,
    JOB_ID_HEADER,
    QUARANTINE_QUEUE,
    REASON_HEADER,
    RING_EXCHANGE,
    declare_topology,
    partition_queue,
)
from app.domain.events import JobEvent
from tests.e2e.harness import Tracker, cli, get_messages, tracker_env, wait_for
from tests.e2e.test_crash_and_integrity import _publish_all, _stream, settled_counts

PARTITIONS = 4  # the tracker's default


async def _reversed_ring(rabbit_url: str) -> None:
    connection = await aio_pika.connect(rabbit_url)
    try:
        channel = await connection.channel()
        await declare_topology(channel, PARTITIONS, ring=False)
        ring = await channel.declare_exchange(
            RING_EXCHANGE,
            aio_pika.ExchangeType.X_CONSISTENT_HASH,
            arguments={"hash-header": JOB_ID_HEADER},
        )
        for index in reversed(range(PARTITIONS)):
            queue = await channel.get_queue(partition_queue(index))
            await queue.bind(ring, routing_key="1")
        await ring.bind(await channel.get_exchange(INTAKE_EXCHANGE))
    finally:
        await connection.close()


async def _lose_the_ring(rabbit_url: str) -> None:
    """What a broker restart does to the transient ring: it is gone."""
    connection = await aio_pika.connect(rabbit_url)
    try:
        channel = await connection.channel()
        await channel.exchange_delete(RING_EXCHANGE)
    finally:
        await connection.close()


def _history(env: dict[str, str], job_id: str) -> list[dict[str, object]] | None:
    code, out = cli(env, "history", job_id, "--json")
    return json.loads(out) if code == 0 else None


def _of_type(events: list[JobEvent], *types: str) -> list[JobEvent]:
    return [e for e in events if e.type in types]


def test_a_ring_rebuilt_in_another_order_keeps_every_jobs_order(
    mongo_url: str, pg_url: str, rabbit_url: str, tmp_path: Path
) -> None:
    env = tracker_env(rabbit_url, mongo_url, pg_url, tmp_path)
    tracker = Tracker(env, tmp_path)
    events = _stream(200)
    published = {str(e.event_id) for e in events}
    asyncio.run(_reversed_ring(rabbit_url))
    _publish_all(rabbit_url, _of_type(events, "submitted"))  # routed by the old ring
    asyncio.run(_lose_the_ring(rabbit_url))
    reserved = _of_type(events, "reserved")
    _publish_all(rabbit_url, reserved)  # no ring: parked in jobtrail.unrouted
    try:
        tracker.start()
        _publish_all(rabbit_url, _of_type(events, "completed", "failed"))  # during the barrier
        counts = settled_counts(env, published, rabbit_url)
        opened = wait_for(
            lambda: re.search(r"opened after (\d+) unrouted events", tracker.log_text()),
            "the barrier to open",
        )
    finally:
        tracker.stop()
    assert counts == {
        "lost": 0,
        "duplicated": 0,
        "gaps": 0,
        "mismatched": 0,
        "anomalies": 0,
        "jobs": 200,
    }
    sent = len(reserved) + len(reserved[::10])  # _publish_all sends every 10th event twice
    assert int(opened.group(1)) >= sent, "every reservation was parked, then recorded"


def test_a_producer_cannot_pass_its_message_off_as_a_marker(
    mongo_url: str, pg_url: str, rabbit_url: str, tmp_path: Path
) -> None:
    """The barrier header on a producer's message (through jobtrail.events) is just a header."""
    env = tracker_env(rabbit_url, mongo_url, pg_url, tmp_path)
    tracker = Tracker(env, tmp_path)
    [event] = _of_type(_stream(1), "submitted")
    fake_epoch = "0" * 32

    async def publish() -> None:
        connection = await aio_pika.connect(rabbit_url)
        try:
            channel = await connection.channel(publisher_confirms=True)
            events = await channel.get_exchange(EVENTS_EXCHANGE)
            for body in (event.model_dump_json().encode(), b""):
                headers = {JOB_ID_HEADER: event.job_id, BARRIER_HEADER: fake_epoch}
                message = aio_pika.Message(body, headers=headers)
                await events.publish(message, routing_key="job.submitted")
        finally:
            await connection.close()

    try:
        tracker.start()
        asyncio.run(publish())
        recorded = wait_for(lambda: _history(env, event.job_id), "the event to be recorded")
        reasons = wait_for(
            lambda: [
                m.headers.get(REASON_HEADER) for m in get_messages(rabbit_url, QUARANTINE_QUEUE)
            ],
            "the empty message to be quarantined",
        )
    finally:
        tracker.stop()
    assert [e["type"] for e in recorded] == ["submitted"]
    assert len(reasons) == 1 and str(reasons[0]).startswith("invalid_json")

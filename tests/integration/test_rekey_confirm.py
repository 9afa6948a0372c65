"""Re-keying waits for the broker's confirm; the original is acknowledged only after it.

An event that arrives without ``x-jobtrail-job-id`` is published again with the header
(``RabbitPublisher.rekey``) and only then acknowledged. On real RabbitMQ: the happy path puts
exactly one copy in the partitions; an unroutable copy (the events exchange has no binding) or a
missing exchange raises ``PublishFailed``; and through the real worker a failed re-key leaves the
original unacknowledged, delivered again until a re-key is confirmed, then recorded once.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from typing import Any

import aio_pika
import pytest

from app.adapters import rabbit
from app.adapters.rabbit import RabbitPublisher
from app.bootstrap import build_tracking, prepare_storage
from app.bootstrap.worker import partition_coordinator
from app.ports import PublishFailed
from app.settings import Settings
from tests.deliveries import count_deliveries
from tests.integration.test_poison_batch import _all_acknowledged, _event, _ready
from tests.polling import until

PARTITIONS = 2


async def _topology(url: str) -> None:
    connection = await aio_pika.connect(url)
    try:
        await rabbit.declare_topology(await connection.channel(), PARTITIONS, ring=True)
    finally:
        await connection.close()


async def _events_binding(url: str, *, bound: bool) -> None:
    """Bind (or unbind) the events exchange to the intake: unbound, nothing is routable."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        intake = await channel.get_exchange(rabbit.INTAKE_EXCHANGE)
        if bound:
            await intake.bind(rabbit.EVENTS_EXCHANGE, routing_key=rabbit.EVENTS_ROUTING)
        else:
            await intake.unbind(rabbit.EVENTS_EXCHANGE, routing_key=rabbit.EVENTS_ROUTING)
    finally:
        await connection.close()


async def _in_partitions(url: str) -> int:
    return sum([await _ready(url, rabbit.partition_queue(p)) for p in range(PARTITIONS)])


@pytest.fixture
async def publisher(rabbit_url: str) -> Any:
    await _topology(rabbit_url)
    made = RabbitPublisher(rabbit_url, partitions=PARTITIONS, timeout=5)
    await made.connect()
    yield made
    await made.close()


async def test_a_confirmed_rekey_puts_exactly_one_copy_in_the_partitions(
    rabbit_url: str, publisher: RabbitPublisher
) -> None:
    body = _event("job-rekeyed")
    await publisher.rekey(body, "job.submitted", "job-rekeyed")
    assert await _in_partitions(rabbit_url) == 1


async def test_a_body_quarantined_twice_carries_one_message_id_its_sha256(
    rabbit_url: str, publisher: RabbitPublisher
) -> None:
    """Quarantine is at least once (a publish whose confirm never came is made again): each
    copy of one body carries the same ``message_id``, the hex SHA-256 of the body."""
    body, other = b'{"type": "submitted", ', b"\xff not utf-8"
    for payload in (body, body, other):
        await publisher.quarantine(payload, "invalid_json: cut short", {})
    connection = await aio_pika.connect(rabbit_url)
    try:
        queue = await (await connection.channel()).get_queue(rabbit.QUARANTINE_QUEUE)
        ids = []
        while (message := await queue.get(no_ack=True, fail=False)) is not None:
            ids.append((message.body, message.message_id))
    finally:
        await connection.close()
    assert ids == [
        (body, hashlib.sha256(body).hexdigest()),
        (body, hashlib.sha256(body).hexdigest()),
        (other, hashlib.sha256(other).hexdigest()),
    ]


async def test_an_unroutable_rekey_fails(rabbit_url: str, publisher: RabbitPublisher) -> None:
    await _events_binding(rabbit_url, bound=False)
    with pytest.raises(PublishFailed):
        await publisher.rekey(_event("job-x"), "job.submitted", "job-x")
    assert await _in_partitions(rabbit_url) == 0
    await _events_binding(rabbit_url, bound=True)
    await publisher.rekey(_event("job-x"), "job.submitted", "job-x")  # the channel recovers
    assert await _in_partitions(rabbit_url) == 1


async def test_a_rekey_the_broker_nacks_fails(rabbit_url: str, publisher: RabbitPublisher) -> None:
    connection = await aio_pika.connect(rabbit_url)
    try:  # a full queue that rejects publishes, fed by the intake too: RabbitMQ nacks the copy
        channel = await connection.channel()
        full = await channel.declare_queue(
            "full", arguments={"x-max-length": 0, "x-overflow": "reject-publish"}
        )
        await full.bind(rabbit.INTAKE_EXCHANGE)
    finally:
        await connection.close()
    with pytest.raises(PublishFailed, match=r"DeliveryError|Nack"):
        await publisher.rekey(_event("job-n"), "job.submitted", "job-n")


async def test_a_rekey_to_a_missing_exchange_fails(
    rabbit_url: str, publisher: RabbitPublisher
) -> None:
    connection = await aio_pika.connect(rabbit_url)
    try:
        await (await connection.channel()).exchange_delete(rabbit.EVENTS_EXCHANGE)
    finally:
        await connection.close()
    with pytest.raises(PublishFailed):
        await publisher.rekey(_event("job-y"), "job.submitted", "job-y")


async def test_the_worker_acks_an_unkeyed_event_only_once_its_rekey_is_confirmed(
    rabbit_url: str, pg_url: str
) -> None:
    settings = Settings(
        rabbit_url=rabbit_url, log_url=pg_url, sql_url=pg_url, partitions=PARTITIONS
    )
    await prepare_storage(settings)
    await _topology(rabbit_url)
    body = _event("job-unkeyed")
    connection = await aio_pika.connect(rabbit_url)
    try:  # straight into a partition, without the header, as a producer's mistake would
        channel = await connection.channel(publisher_confirms=True)
        await channel.default_exchange.publish(
            aio_pika.Message(body, delivery_mode=2), routing_key=rabbit.partition_queue(0)
        )
    finally:
        await connection.close()

    tracking = build_tracking(settings)
    deliveries: Counter[tuple[str, bool]] = Counter()
    count_deliveries(
        tracking.ingestor,
        lambda got, keyed: deliveries.update([(json.loads(got)["job_id"], keyed)]),
    )
    await tracking.start()  # declares the topology: unbind after it
    await _events_binding(rabbit_url, bound=False)
    coordinator = tracking.coordinator = partition_coordinator(tracking)
    await coordinator.start()
    try:

        async def redelivered() -> bool:
            return deliveries["job-unkeyed", False] >= 2

        await until(redelivered, "the unacknowledged original to come again")
        assert await tracking.readers.log.count() == 0
        await _events_binding(rabbit_url, bound=True)

        async def recorded() -> bool:
            return await tracking.readers.log.count() == 1

        await until(recorded, "the re-keyed copy to be recorded")
        # The original acknowledged (no re-key comes after that) and every confirmed copy
        # consumed and acknowledged: the counts below are final.
        await until(
            lambda: _all_acknowledged(rabbit_url, PARTITIONS), "every delivery acknowledged"
        )
    finally:
        await coordinator.stop()
        await tracking.stop()
    assert deliveries["job-unkeyed", True] == 1, "exactly one re-keyed copy"
    assert await _in_partitions(rabbit_url) == 0, "the original was acknowledged in the end"
    assert await _ready(rabbit_url, rabbit.QUARANTINE_QUEUE) == 0

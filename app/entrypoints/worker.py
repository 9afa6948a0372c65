"""The FastStream app: thin subscribers that hand raw messages to the ingestion service."""

from __future__ import annotations

import logging
import re
from typing import Any, NamedTuple

from faststream import AckPolicy, FastStream
from faststream.rabbit import Channel, QueueType, RabbitBroker, RabbitQueue

from app.adapters import rabbit
from app.bootstrap import Tracking
from app.services.broker_signals import broker_dead_letter

log = logging.getLogger("jobtrail.worker")

_EPOCH = re.compile(r"[0-9a-f]{32}")  # a barrier epoch; any other header value is not a marker


class Incoming(NamedTuple):
    """A message as delivered: its body, undecoded, and whether it named its job in a header.

    ``barrier`` is the epoch of a ring barrier's marker (app/services/ring.py), else None.
    """

    body: bytes
    keyed: bool
    barrier: str | None = None


async def _incoming(message: Any) -> Incoming:
    """Hand the body over undecoded: validation (and quarantine) is the service's job.

    Reading the header here, in the decoder, costs nothing; injecting the message into the
    handler would cost a worker-thread round trip per message (see NOTES-stack.md).
    """
    headers = message.headers or {}
    body = bytes(message.body)
    return Incoming(body, rabbit.JOB_ID_HEADER in headers, _marker(message, headers, body))


def _marker(message: Any, headers: dict[str, Any], body: bytes) -> str | None:
    """The epoch of a ring barrier's marker, or None: only Jobtrail's own markers count.

    Those are empty and published straight to the partition queue (the default exchange); a
    producer's message through jobtrail.events carrying the header is handled as any other.
    """
    epoch = headers.get(rabbit.BARRIER_HEADER)
    if body or not isinstance(epoch, str) or not _EPOCH.fullmatch(epoch):
        return None
    raw = getattr(message, "raw_message", None)
    return epoch if getattr(raw, "exchange", None) == "" else None


class DeadJob(NamedTuple):
    """A job message RabbitMQ dead-lettered: its body and headers (x-death, x-delivery-count)."""

    body: bytes
    headers: dict[str, Any]


async def _dead_job(message: Any) -> DeadJob:
    return DeadJob(bytes(message.body), dict(message.headers or {}))


def create_app(tracking: Tracking) -> FastStream:
    """A FastStream app whose subscribers feed ``tracking`` (started separately).

    The topology is declared by the publisher when ``tracking`` starts; the subscribers only
    consume: one per partition queue (single active consumer, so one tracker owns a job) and
    one for the broker dead-letter queue.
    """
    settings = tracking.settings
    # No per-message dependency injection: the handlers take the decoder's output as it is, and
    # FastDepends' validation of it would cost as much as the rest of FastStream's work.
    broker = RabbitBroker(
        settings.rabbit_url, logger=log, log_level=logging.DEBUG, apply_types=False
    )
    for index in range(settings.partitions):
        _subscribe_partition(broker, tracking, index)
    broker_dead = RabbitQueue(  # type: ignore[call-overload]
        rabbit.BROKER_DEAD_QUEUE,
        queue_type=QueueType.QUORUM,
        durable=True,
        arguments=rabbit.BROKER_DEAD_QUEUE_ARGS,
    )

    @broker.subscriber(
        broker_dead,
        channel=Channel(prefetch_count=64),
        ack_policy=AckPolicy.NACK_ON_ERROR,
        decoder=_dead_job,
        title="jobtrail.broker-dead",
        description="Job messages that RabbitMQ dead-lettered from work queues (x-death).",
    )
    async def on_broker_dead_letter(dead: Any) -> None:  # a DeadJob
        event, reason = broker_dead_letter(dead.body, dead.headers, tracking.clock.now())
        if event is None:
            assert reason is not None
            await tracking.publisher.quarantine(dead.body, reason, {})
            return
        await tracking.batcher.submit(event)

    return FastStream(broker, logger=log)


def _subscribe_partition(broker: RabbitBroker, tracking: Tracking, index: int) -> None:
    queue = RabbitQueue(  # type: ignore[call-overload]
        rabbit.partition_queue(index),
        queue_type=QueueType.QUORUM,
        durable=True,
        arguments=rabbit.TRACKER_QUEUE_ARGS,
    )

    @broker.subscriber(
        queue,
        channel=Channel(prefetch_count=tracking.settings.prefetch),
        ack_policy=AckPolicy.NACK_ON_ERROR,
        decoder=_incoming,
        title=rabbit.partition_queue(index),
        description=(
            "Lifecycle events published to jobtrail.events (routing key job.<type>), "
            "spread over partitions by the x-jobtrail-job-id header."
        ),
    )
    async def on_event(message: Any) -> None:  # an Incoming (no validation: apply_types=False)
        if message.barrier is not None:
            await tracking.ring.arrive(index, message.barrier)
            return
        await tracking.ingestor.accept(message.body, keyed=message.keyed, partition=index)

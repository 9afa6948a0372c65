"""The FastStream app: thin subscribers that hand raw messages to the ingestion service."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any, NamedTuple

from faststream import AckPolicy, FastStream
from faststream.rabbit import Channel, QueueType, RabbitBroker, RabbitMessage, RabbitQueue

from app.adapters import rabbit
from app.adapters.rabbit_acks import BatchAcks
from app.adapters.rabbit_partitions import RabbitPartitionConsumers
from app.bootstrap import Tracking
from app.ports import PublishFailed, WriteRefused
from app.services.batcher import DeliveryAbandoned
from app.services.broker_signals import broker_dead_letter
from app.services.partitions import PartitionCoordinator

log = logging.getLogger("jobtrail.worker")

PUBLISH_RETRY_PAUSE = 1.0
"""Seconds before a delivery whose re-key or quarantine publish failed is given back."""
_EPOCH = re.compile(r"[0-9a-f]{32}")  # a barrier epoch; any other header value is not a marker


class Incoming(NamedTuple):
    """A message as delivered: its body, undecoded, and whether it named its job in a header.

    ``barrier`` is the epoch of a ring barrier's marker (app/services/ring.py), else None.
    ``raw`` is aio-pika's message: the handler acknowledges it itself.
    """

    body: bytes
    keyed: bool
    barrier: str | None
    raw: Any


async def _incoming(message: Any) -> Incoming:
    """Hand the body over undecoded: validation (and quarantine) is the service's job.

    Reading the header here, in the decoder, costs nothing; injecting the message into the
    handler would cost a worker-thread round trip per message.
    """
    headers = message.headers or {}
    body = bytes(message.body)
    raw = message.raw_message
    return Incoming(body, rabbit.JOB_ID_HEADER in headers, _marker(raw, headers, body), raw)


def _marker(raw: Any, headers: dict[str, Any], body: bytes) -> str | None:
    """The epoch of a ring barrier's marker, or None: only Jobtrail's own markers count.

    Those are empty and published straight to the partition queue (the default exchange); a
    producer's message through jobtrail.events carrying the header is handled as any other.
    """
    epoch = headers.get(rabbit.BARRIER_HEADER)
    if body or not isinstance(epoch, str) or not _EPOCH.fullmatch(epoch):
        return None
    return epoch if getattr(raw, "exchange", None) == "" else None


async def _parse(raw: Any) -> RabbitMessage:
    """FastStream's parser for a partition queue, minus what costs and serves nothing here.

    FastStream's own draws two uuid4 per message that lacks a message and correlation id (most
    producers' events do): about 4 % of a tracker's CPU under load (py-spy), for ids used only
    in FastStream's debug logs. The delivery tag stands in for them.
    """
    fallback = raw.message_id or raw.correlation_id or f"delivery-{raw.delivery_tag}"
    return RabbitMessage(
        body=raw.body,
        headers=raw.headers,
        reply_to=raw.reply_to or "",
        content_type=raw.content_type,
        message_id=raw.message_id or fallback,
        correlation_id=raw.correlation_id or fallback,
        raw_message=raw,
    )


class DeadJob(NamedTuple):
    """A job message RabbitMQ dead-lettered: its body and headers (x-death, x-delivery-count)."""

    body: bytes
    headers: dict[str, Any]


async def _dead_job(message: Any) -> DeadJob:
    return DeadJob(bytes(message.body), dict(message.headers or {}))


def create_app(tracking: Tracking) -> FastStream:
    """A FastStream app whose subscribers feed ``tracking`` (started separately).

    The topology is declared by the publisher when ``tracking`` starts; the subscribers only
    consume. The app's broker consumes the broker dead-letter queue; once it has started, the
    partition coordinator subscribes to this tracker's share of the partition queues, each on
    its own connection (app/services/partitions.py).
    """
    settings = tracking.settings
    # No per-message dependency injection: the handlers take the decoder's output as it is, and
    # FastDepends' validation of it would cost as much as the rest of FastStream's work.
    broker = RabbitBroker(
        settings.rabbit_url, logger=log, log_level=logging.DEBUG, apply_types=False
    )
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
        try:
            await tracking.batcher.submit(event)
        except WriteRefused as exc:  # never storable: park it rather than nack it forever
            await tracking.publisher.quarantine(dead.body, f"refused_by_store: {exc}", {})

    coordinator = tracking.coordinator = partition_coordinator(tracking)
    return FastStream(
        broker, logger=log, after_startup=[coordinator.start], on_shutdown=[coordinator.stop]
    )


def partition_coordinator(tracking: Tracking) -> PartitionCoordinator:
    """The coordinator of this tracker's share of the partitions, on real RabbitMQ."""
    settings = tracking.settings
    consumers = RabbitPartitionConsumers(
        settings.rabbit_url,
        lambda broker, index: subscribe_partition(broker, tracking, index),
        name=f"jobtrail {tracking.member}",
    )
    return PartitionCoordinator(
        tracking.membership,
        consumers,
        tracking.ingestor,
        settings.partitions,
        tracking.member,
        tracking.clock,
        ttl=settings.member_ttl_s,
        beat_every=settings.member_ttl_s / 5,
    )


def partition_queue(index: int) -> RabbitQueue:
    """Partition queue ``index`` as FastStream declares it (quorum, single active consumer)."""
    return RabbitQueue(  # type: ignore[call-overload,no-any-return]
        rabbit.partition_queue(index),
        queue_type=QueueType.QUORUM,
        durable=True,
        arguments=rabbit.TRACKER_QUEUE_ARGS,
    )


def subscribe_partition(broker: RabbitBroker, tracking: Tracking, index: int) -> None:
    """Register partition ``index``'s subscriber on ``broker``."""
    queue = partition_queue(index)
    ingestor = tracking.ingestor
    acks = BatchAcks()  # a committed batch is acknowledged with one frame per partition

    @broker.subscriber(
        queue,
        channel=Channel(prefetch_count=tracking.settings.prefetch),
        # Acknowledged here, inside ``delivery``: a partition is handed over only once every
        # delivery recorded here is acknowledged (app/services/partitions.py).
        ack_policy=AckPolicy.MANUAL,
        parser=_parse,
        decoder=_incoming,
        title=rabbit.partition_queue(index),
        description=(
            "Lifecycle events published to jobtrail.events (routing key job.<type>), "
            "spread over partitions by the x-jobtrail-job-id header."
        ),
    )
    async def on_event(message: Any) -> None:  # an Incoming (no validation: apply_types=False)
        if message.barrier is not None:
            # Not a delivery the hand-over waits for: it waits for the whole ring.
            await tracking.ring.arrive(index, message.barrier)
            await acks.ack(message.raw)
            return
        with ingestor.delivery(index):
            try:
                await ingestor.accept(
                    message.body,
                    keyed=message.keyed,
                    partition=index,
                    routing_key=getattr(message.raw, "routing_key", None),
                )
            except DeliveryAbandoned:
                return  # handed back to the broker with the partition: not an error
            except PublishFailed as exc:
                # A re-keyed copy (or a quarantined one) was not confirmed: the original is not
                # acknowledged. Given back after a pause, so a broker in trouble does not spend
                # the queue's delivery limit in a second of retries. The copy may have landed
                # all the same: a repeat carries the same message id (docs/protocol.md).
                log.warning(
                    "not acknowledged, given back to the broker: %s",
                    exc,
                    extra={"partition": index, "body_sha256": rabbit.quarantine_id(message.body)},
                )
                await asyncio.sleep(PUBLISH_RETRY_PAUSE)
                await acks.nack(message.raw)
                return
            except Exception:
                await acks.nack(message.raw)
                raise
            await acks.ack(message.raw)

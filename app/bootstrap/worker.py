"""The FastStream app and the partition queues' handlers: raw messages to the ingestion service."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, NamedTuple

from aio_pika.abc import AbstractIncomingMessage
from faststream import AckPolicy, FastStream
from faststream.rabbit import Channel, QueueType, RabbitBroker, RabbitQueue

from app.adapters import rabbit
from app.adapters.rabbit_acks import BatchAcks
from app.adapters.rabbit_partitions import Handler, RabbitPartitionConsumers
from app.bootstrap import Tracking
from app.ports import PublishFailed, WriteRefused
from app.services.batcher import DeliveryAbandoned
from app.services.broker_signals import broker_dead_letter
from app.services.partitions import PartitionCoordinator

log = logging.getLogger("jobtrail.worker")

PUBLISH_RETRY_PAUSE = 1.0
"""Seconds before a delivery whose re-key or quarantine publish failed is given back."""
_EPOCH = re.compile(r"[0-9a-f]{32}")  # a barrier epoch; any other header value is not a marker


def _marker(message: AbstractIncomingMessage, headers: dict[str, Any]) -> str | None:
    """The epoch of a ring barrier's marker, or None: only Jobtrail's own markers count.

    Those are empty and published straight to the partition queue (the default exchange); a
    producer's message through jobtrail.events carrying the header is handled as any other.
    """
    epoch = headers.get(rabbit.BARRIER_HEADER)
    if message.body or not isinstance(epoch, str) or not _EPOCH.fullmatch(epoch):
        return None
    return epoch if message.exchange == "" else None


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
        lambda index: partition_handler(tracking, index),
        prefetch=settings.prefetch,
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


def partition_handler(tracking: Tracking, index: int) -> Handler:
    """The handler of partition ``index``'s deliveries (aio-pika messages, manual acks)."""
    return _PartitionHandler(tracking, index).on_event


class _PartitionHandler:
    """Partition ``index``'s deliveries to the ingestion service, acknowledged once recorded.

    The body goes to the ingestion service undecoded: validation (and quarantine) is its job.
    A partition is handed over only once every delivery recorded here is acknowledged
    (app/services/partitions.py). The common delivery (a valid event naming its job, of a
    partition that is not paused) never waits here: it is handed to the batcher, and its batch's
    commit acknowledges it through callbacks, so its task ends at once instead of waiting for the
    commit and the acknowledgement (docs/performance.md, item 19). The rest (ring markers,
    quarantines, re-keying, held deliveries) is awaited in the delivery's task as before.
    """

    def __init__(self, tracking: Tracking, index: int) -> None:
        self.tracking = tracking
        self.ingestor = tracking.ingestor
        self.index = index
        self.acks = BatchAcks()  # a committed batch is acknowledged with one frame per partition

    async def on_event(self, message: AbstractIncomingMessage) -> None:
        headers = message.headers
        if headers and (barrier := _marker(message, headers)) is not None:
            # Not a delivery the hand-over waits for: it waits for the whole ring.
            await self.tracking.ring.arrive(self.index, barrier)
            await self.acks.ack(message)
            return
        keyed = bool(headers) and rabbit.JOB_ID_HEADER in headers
        ingestor, index = self.ingestor, self.index
        ingestor.begin(index)  # in flight until acknowledged, given back or abandoned
        try:
            done = ingestor.accept_soon(
                message.body, keyed=keyed, partition=index, routing_key=message.routing_key
            )
            if done is not None:
                done.add_done_callback(lambda done: self._recorded(message, done))
                return
            work = ingestor.accept(
                message.body, keyed=keyed, partition=index, routing_key=message.routing_key
            )
        except BaseException:
            ingestor.end(index)
            raise
        try:
            await self._handle(message, work)
        finally:
            ingestor.end(index)

    def _recorded(self, message: AbstractIncomingMessage, done: asyncio.Future[None]) -> None:
        """The fast path's end: acknowledge ``message`` once its batch is recorded."""
        exc = DeliveryAbandoned() if done.cancelled() else done.exception()
        end = self.ingestor.end
        if exc is None:
            waiting = self.acks.finish(message, ack=True)
            if waiting is None:
                end(self.index)
            else:
                waiting.add_done_callback(lambda _: end(self.index))
        elif isinstance(exc, DeliveryAbandoned):
            end(self.index)  # handed back to the broker with the partition: not an error
        else:  # a refused write is quarantined, anything else given back
            _spawn(message, self._after_failure(message, exc), lambda: end(self.index))

    async def _after_failure(self, message: AbstractIncomingMessage, exc: BaseException) -> None:
        async def quarantine_or_raise() -> None:
            if not isinstance(exc, WriteRefused):
                raise exc
            await self.ingestor.refused(message.body, exc)

        await self._handle(message, quarantine_or_raise())

    async def _handle(self, message: AbstractIncomingMessage, work: Awaitable[None]) -> None:
        """Await ``work``, then acknowledge ``message``, or give it back if it failed."""
        try:
            await work
        except DeliveryAbandoned:
            return  # handed back to the broker with the partition: not an error
        except PublishFailed as exc:
            # A re-keyed copy (or a quarantined one) was not confirmed: the original is not
            # acknowledged. Given back after a pause, so a broker in trouble does not spend the
            # queue's delivery limit in a second of retries. The copy may have landed all the
            # same: a repeat carries the same message id (docs/protocol.md).
            log.warning(
                "not acknowledged, given back to the broker: %s",
                exc,
                extra={"partition": self.index, "body_sha256": rabbit.quarantine_id(message.body)},
            )
            await asyncio.sleep(PUBLISH_RETRY_PAUSE)
            await self.acks.nack(message)
            return
        except Exception:
            # Given back; the queue's delivery limit dead-letters a message that fails every
            # time (x-delivery-limit, docs/reliability.md).
            log.exception("handling a delivery failed; given back", extra={"partition": self.index})
            await self.acks.nack(message)
            return
        await self.acks.ack(message)


def _spawn(
    message: AbstractIncomingMessage, work: Coroutine[Any, Any, None], ended: Callable[[], None]
) -> None:
    """Run ``work`` as a task of ``message``'s channel (closing the channel cancels it, as it
    cancels the deliveries' own tasks), then call ``ended``: once the task is done, cancelled
    even before it started, or at once if the channel is closed already (``work`` is then
    closed unstarted and the broker delivers the message again)."""
    try:
        channel = message.channel
    except rabbit.BROKER_ERRORS:
        work.close()
        ended()
        return
    task = channel.create_task(work)
    task.add_done_callback(lambda _: ended())

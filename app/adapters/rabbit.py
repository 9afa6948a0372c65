"""RabbitMQ: Jobtrail's topology and a publisher with confirms (aio-pika, robust connection).

Every publish is persistent, mandatory and confirmed: an unroutable or nacked message raises
``PublishFailed`` so the outbox keeps it. Work queues are declared before the first publish to
them (durable, with a maximum priority and the broker dead-letter exchange) so a republished job
is never dropped for want of a queue.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection

from app.ports import OutboxMessage, PublishFailed
from app.ports.topology import (  # re-exported: the broker code and its tests name them here
    BARRIER_HEADER as BARRIER_HEADER,
)
from app.ports.topology import (
    BROKER_DEAD_QUEUE as BROKER_DEAD_QUEUE,
)
from app.ports.topology import (
    BROKER_DEAD_QUEUE_ARGS as BROKER_DEAD_QUEUE_ARGS,
)
from app.ports.topology import (
    BROKER_DLX as BROKER_DLX,
)
from app.ports.topology import (
    DEAD_QUEUE as DEAD_QUEUE,
)
from app.ports.topology import (
    EVENTS_EXCHANGE as EVENTS_EXCHANGE,
)
from app.ports.topology import (
    EVENTS_ROUTING as EVENTS_ROUTING,
)
from app.ports.topology import (
    INTAKE_EXCHANGE as INTAKE_EXCHANGE,
)
from app.ports.topology import (
    INTAKE_EXCHANGE_ARGS as INTAKE_EXCHANGE_ARGS,
)
from app.ports.topology import (
    JOB_ID_HEADER as JOB_ID_HEADER,
)
from app.ports.topology import (
    LEGACY_PARTITION_EXCHANGE as LEGACY_PARTITION_EXCHANGE,
)
from app.ports.topology import (
    QUARANTINE_QUEUE as QUARANTINE_QUEUE,
)
from app.ports.topology import (
    REASON_HEADER as REASON_HEADER,
)
from app.ports.topology import (
    RING_EXCHANGE as RING_EXCHANGE,
)
from app.ports.topology import (
    TRACKER_DELIVERY_LIMIT as TRACKER_DELIVERY_LIMIT,
)
from app.ports.topology import (
    TRACKER_QUEUE_ARGS as TRACKER_QUEUE_ARGS,
)
from app.ports.topology import (
    UNROUTED_EXCHANGE as UNROUTED_EXCHANGE,
)
from app.ports.topology import (
    UNROUTED_QUEUE as UNROUTED_QUEUE,
)
from app.ports.topology import (
    UNROUTED_QUEUE_ARGS as UNROUTED_QUEUE_ARGS,
)
from app.ports.topology import (
    partition_queue as partition_queue,
)
from app.ports.topology import (
    work_queue_args as work_queue_args,
)

log = logging.getLogger("jobtrail.rabbit")

BROKER_ERRORS = (
    # aio-pika raises a bare RuntimeError("... closed") for a publish on a closed connection.
    RuntimeError,
    aio_pika.exceptions.AMQPError,
    aiormq.exceptions.AMQPError,
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
)


class ClosingConnection(aio_pika.Connection):
    """An aio-pika connection that closes itself when it fails to open.

    Otherwise the failed object's ``__del__`` schedules ``close()`` from the garbage collector,
    often with no loop running: a coroutine never awaited, warned about at some later moment.
    Pass it as ``aio_pika.connect(url, connection_class=ClosingConnection)``.
    """

    async def connect(self, timeout: aio_pika.abc.TimeoutType = None) -> None:  # noqa: ASYNC109 - aio-pika's signature
        try:
            await super().connect(timeout)
        except BaseException:
            await self.close()
            raise


async def publish_to_queue(
    channel: aio_pika.abc.AbstractChannel,
    message: aio_pika.Message,
    queue: str,
    confirm_within: float,
) -> None:
    """Publish straight to ``queue`` (the default exchange), mandatory and confirmed."""
    await publish_confirmed(channel.default_exchange, message, queue, confirm_within)


def quarantine_id(body: bytes) -> str:
    """The ``message_id`` of a quarantined copy: the hex SHA-256 of its body."""
    return hashlib.sha256(body).hexdigest()


async def publish_confirmed(
    exchange: aio_pika.abc.AbstractExchange,
    message: aio_pika.Message,
    routing_key: str,
    confirm_within: float,
) -> None:
    """Publish mandatory and wait (at most ``confirm_within`` s) for the broker's ``basic.ack``.

    Anything else fails: a ``basic.nack``, a return (the message reached no queue; on a channel
    without ``on_return_raises`` it comes back as the result), a timeout or a lost channel
    (raised by aio-pika as one of ``BROKER_ERRORS``) or a channel opened without confirms
    (``None``).
    """
    confirmation = await exchange.publish(
        message, routing_key=routing_key, mandatory=True, timeout=confirm_within
    )
    if not isinstance(confirmation, aiormq.spec.Basic.Ack):
        raise PublishFailed(
            f"broker did not confirm the publish to {exchange.name or 'the default exchange'} "
            f"({routing_key}): {confirmation!r}"
        )


class RabbitPublisher:
    """Confirmed publishes for the outbox relay and the quarantine."""

    def __init__(
        self, url: str, *, partitions: int = 1, max_priority: int = 9, timeout: float = 10.0
    ) -> None:
        self._url = url
        self._partitions = partitions
        self._max_priority = max_priority
        self._timeout = timeout
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._declared: set[str] = set()
        self._lock = asyncio.Lock()
        self._opening = asyncio.Lock()
        self._on_reconnect: list[Callable[[], None]] = []

    def on_reconnect(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` each time the connection comes back (the broker may have restarted)."""
        self._on_reconnect.append(callback)

    async def connect(self) -> None:
        """Connect and declare Jobtrail's queues and exchanges (the ring is its keeper's job)."""
        try:
            self._connection = await aio_pika.connect_robust(self._url, timeout=self._timeout)
            self._connection.reconnect_callbacks.add(self._reconnected)
            self._channel = await self._open_channel()
            await declare_topology(self._channel, self._partitions, ring=False)
            # Declared above with their own arguments: never re-declare them as work queues.
            self._declared |= {DEAD_QUEUE, QUARANTINE_QUEUE}
        except aiormq.exceptions.ConnectionCommandInvalid as exc:
            raise PublishFailed(
                f"RabbitMQ refused Jobtrail's topology ({exc}); is the "
                "rabbitmq_consistent_hash_exchange plugin enabled?"
            ) from exc
        except BROKER_ERRORS as exc:
            raise PublishFailed(f"cannot reach RabbitMQ: {exc!r}") from exc

    def _reconnected(self, *_: object) -> None:
        for callback in self._on_reconnect:
            callback()

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
            self._connection = None

    async def publish(self, message: OutboxMessage) -> None:
        """Publish one outbox message, confirmed; raises PublishFailed otherwise."""
        try:
            await self._ensure_queue(message.routing_key)
            await self._publish(
                message.body,
                message.routing_key,
                headers=dict(message.headers),
                priority=message.priority,
                message_id=message.event_id,
            )
        except BROKER_ERRORS as exc:
            raise PublishFailed(f"publish to {message.routing_key} failed: {exc!r}") from exc

    async def rekey(self, body: bytes, routing_key: str, job_id: str) -> None:
        """Publish an event again with its job-id header, so its job's partition gets it.

        Returns only once the broker confirmed the copy (persistent, routed to a queue); raises
        ``PublishFailed`` otherwise, and the caller must then not acknowledge the original.
        """
        try:
            channel = await self._live_channel()
            message = aio_pika.Message(
                body,
                headers={JOB_ID_HEADER: job_id},
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            )
            exchange = await channel.get_exchange(EVENTS_EXCHANGE, ensure=False)
            await publish_confirmed(exchange, message, routing_key, self._timeout)
        except BROKER_ERRORS as exc:
            raise PublishFailed(f"re-publishing an event for {job_id} failed: {exc!r}") from exc

    async def quarantine(self, body: bytes, reason: str, headers: Mapping[str, str]) -> None:
        """Park an unacceptable message with its reason in ``x-jobtrail-reason``.

        Its ``message_id`` is the SHA-256 of the body: a message quarantined again after a
        publish whose confirm never came (it may have landed) carries the same id as the first.
        """
        try:
            await self._publish(
                body,
                QUARANTINE_QUEUE,
                headers={**headers, REASON_HEADER: reason[:1000]},
                message_id=quarantine_id(body),
            )
        except BROKER_ERRORS as exc:
            raise PublishFailed(f"quarantine failed: {exc!r}") from exc

    async def _publish(
        self,
        body: bytes,
        routing_key: str,
        *,
        headers: dict[str, Any],
        priority: int | None = None,
        message_id: str | None = None,
    ) -> None:
        channel = await self._live_channel()
        message = aio_pika.Message(
            body,
            headers=headers,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            priority=priority,
            message_id=message_id,
            timestamp=datetime.now(UTC),  # when Jobtrail published it (AMQP: whole seconds)
        )
        await publish_to_queue(channel, message, routing_key, self._timeout)

    async def _ensure_queue(self, queue: str) -> None:
        if queue in self._declared:
            return
        async with self._lock:
            if queue in self._declared:  # declared while this publish waited (they overlap)
                return
            channel = await self._live_channel()
            try:
                await channel.declare_queue(
                    queue, durable=True, arguments=work_queue_args(self._max_priority)
                )
            except aiormq.exceptions.ChannelPreconditionFailed:
                # The queue exists with other arguments (declared by someone else): use it as is.
                log.info("work queue %s exists with other arguments; using it as declared", queue)
                self._channel = await self._open_channel()
                await self._channel.declare_queue(queue, passive=True)
            self._declared.add(queue)

    async def _live_channel(self) -> AbstractRobustChannel:
        channel = self._channel
        if self._connection is not None and channel is not None and not channel.is_closed:
            return channel
        async with self._opening:  # overlapping publishes open one channel, not one each
            if self._connection is None:
                await self.connect()
            if self._channel is None or self._channel.is_closed:
                self._channel = await self._open_channel()
            return self._channel

    async def _open_channel(self) -> AbstractRobustChannel:
        assert self._connection is not None
        return await self._connection.channel(publisher_confirms=True, on_return_raises=True)


async def declare_topology(
    channel: aio_pika.abc.AbstractChannel, partitions: int = 1, *, ring: bool = True
) -> None:
    """Declare the exchanges and queues Jobtrail owns (idempotent).

    ``jobtrail.events`` (topic) sends ``job.#`` to ``jobtrail.intake`` (fanout), which feeds
    ``jobtrail.ring`` (consistent hash on the ``x-jobtrail-job-id`` header), which spreads jobs
    over the partition queues ``jobtrail.tracker.<n>``; each has a single active consumer, so one
    tracker owns a job. What the intake cannot route (no ring yet) goes to its alternate
    exchange and the ``jobtrail.unrouted`` queue. Producers may declare ``jobtrail.events``
    themselves (durable topic, no arguments).

    The ring is transient: RabbitMQ 3.x rebuilds a durable one at boot in whatever order its
    bindings come back, which moves about half the jobs to another partition. A tracker builds
    it again after each broker start, behind a barrier (app/services/ring.py); ``ring=False``
    leaves it to that barrier.
    """
    unrouted_exchange = await channel.declare_exchange(
        UNROUTED_EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=True
    )
    unrouted = await channel.declare_queue(
        UNROUTED_QUEUE, durable=True, arguments=UNROUTED_QUEUE_ARGS
    )
    await unrouted.bind(unrouted_exchange)
    events = await channel.declare_exchange(
        EVENTS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
    )
    intake = await channel.declare_exchange(
        INTAKE_EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=True, arguments=INTAKE_EXCHANGE_ARGS
    )
    await intake.bind(events, routing_key=EVENTS_ROUTING)
    await channel.exchange_delete(LEGACY_PARTITION_EXCHANGE)  # a no-op once it is gone
    for index in range(partitions):
        await channel.declare_queue(
            partition_queue(index), durable=True, arguments=TRACKER_QUEUE_ARGS
        )
    await channel.declare_queue(QUARANTINE_QUEUE, durable=True)
    await channel.declare_queue(DEAD_QUEUE, durable=True)
    dlx = await channel.declare_exchange(BROKER_DLX, aio_pika.ExchangeType.FANOUT, durable=True)
    broker_dead = await channel.declare_queue(
        BROKER_DEAD_QUEUE, durable=True, arguments=BROKER_DEAD_QUEUE_ARGS
    )
    await broker_dead.bind(dlx)
    if ring:
        await declare_ring(channel, partitions)


async def declare_ring(channel: aio_pika.abc.AbstractChannel, partitions: int) -> None:
    """Build the ring (partition queues bound in index order, equal weights), then feed it.

    A ring built afresh in the same order always routes a job to the same partition; binding
    queues that are bound already changes nothing.
    """
    ring = await channel.declare_exchange(
        RING_EXCHANGE,
        aio_pika.ExchangeType.X_CONSISTENT_HASH,
        durable=False,
        arguments={"hash-header": JOB_ID_HEADER},
    )
    for index in range(partitions):
        queue = await channel.declare_queue(partition_queue(index), passive=True)
        await queue.bind(ring, routing_key="1")
    intake = await channel.get_exchange(INTAKE_EXCHANGE, ensure=False)
    await ring.bind(intake)

"""PartitionConsumers on RabbitMQ: one AMQP connection per partition, consumed with aio-pika.

A partition is released by closing its connection, never by cancelling its consumer: RabbitMQ
3.10 activates the next single-active consumer as soon as the first one cancels, while the first
still holds deliveries that it would only hand back later, behind newer ones. Closing the
connection hands every unacknowledged delivery back to the queue in order and activates the
next consumer in one step (what a crash does; docs/architecture.md).

The partition queues are consumed with aio-pika's robust connection, channel and queue (what
FastStream's RabbitMQ subscriber consumes with, so a dropped connection is reconnected and the
consumer restored the same way), but not through a FastStream subscriber: its per-message
pipeline (context scopes, middlewares, parser and decoder wrappers) cost about a sixth of a
tracker's CPU, as much as all of its recording (docs/performance.md, item 19). The
FastStream app still runs the tracker and its other subscriber (the broker's dead letters).
Each subscription gets a fresh connection: a closed one is never reused.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from yarl import URL

from app.adapters.rabbit import BROKER_ERRORS, TRACKER_QUEUE_ARGS, partition_queue

log = logging.getLogger("jobtrail.partitions")

CLOSE_TIMEOUT = 5.0
"""Seconds a partition's connection close may take."""

Handler = Callable[[AbstractIncomingMessage], Awaitable[None]]
"""Handles one delivery (as a task of its channel) and acknowledges it itself."""
HandlerFor = Callable[[int], Handler]
"""The handler of partition ``index``'s deliveries (app/bootstrap/worker.py)."""


class RabbitPartitionConsumers:
    """Consumes the partitions it was asked to, each on its own connection."""

    def __init__(
        self, url: str, handler_for: HandlerFor, *, prefetch: int, name: str = "jobtrail"
    ) -> None:
        self._url = url
        self._handler_for = handler_for
        self._prefetch = prefetch
        self._name = name
        self._connections: dict[int, AbstractRobustConnection] = {}

    def consuming(self) -> set[int]:
        return set(self._connections)

    async def consume(self, partition: int) -> None:
        """Subscribe to ``partition`` (a no-op if already subscribed)."""
        if partition in self._connections:
            return
        # The connection's name (aiormq's ``name`` query parameter) is shown by the management
        # UI and ``rabbitmqctl list_connections``: who consumes which partition.
        url = URL(self._url).update_query(name=f"{self._name} partition {partition}")
        connection: AbstractRobustConnection | None = None
        try:
            connection = await aio_pika.connect_robust(str(url))
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=self._prefetch)
            # Declared as the publisher declares it (idempotent): a consumer started before
            # the topology's declaration still consumes the right queue.
            queue = await channel.declare_queue(
                partition_queue(partition), durable=True, arguments=TRACKER_QUEUE_ARGS
            )
            await queue.consume(self._handler_for(partition))
        except BaseException:
            await _close(connection)
            raise
        self._connections[partition] = connection

    async def release(self, partition: int) -> None:
        """Close ``partition``'s connection: its unacknowledged deliveries go back in order.

        The partition counts as consumed until its connection is closed: a release cut short
        (cancelled, or timed out by the caller) leaves it to be released again.
        """
        held = self._connections.get(partition)
        if held is not None:
            await _close(held)
            if self._connections.get(partition) is held:
                del self._connections[partition]

    async def close(self) -> None:
        for partition in sorted(self._connections):
            await self.release(partition)


async def _close(connection: AbstractRobustConnection | None) -> None:
    # Bounded: a broker that stops answering must not hold a hand-over or a stop up (an
    # unanswered close still drops the socket, which hands the deliveries back too).
    if connection is None:
        return
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await connection.close()
    except (*BROKER_ERRORS, TimeoutError) as exc:  # broken: the deliveries go back anyway
        log.warning("closing a partition connection failed: %r", exc)

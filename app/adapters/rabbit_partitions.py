"""PartitionConsumers on RabbitMQ: one FastStream broker, so one connection, per partition.

A partition is released by closing its connection, never by cancelling its consumer: RabbitMQ
3.10 activates the next single-active consumer as soon as the first one cancels, while the first
still holds deliveries that it would only hand back later, behind newer ones. Closing the
connection hands every unacknowledged delivery back to the queue in order and activates the
next consumer in one step (what a crash does; docs/architecture.md).

Each subscription gets a fresh broker: FastStream caches channels and queue objects per broker,
and a closed connection's would otherwise be reused. The connection to close is the one
FastStream's public ``RabbitBroker.connect()`` returns (the broker's own, made once); anything
but an aio-pika connection there fails the subscription loudly, never falling back to a
cancel-first stop (tests/integration/test_faststream_connection.py pins that API).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from importlib.metadata import version

from aio_pika.abc import AbstractConnection
from faststream.rabbit import RabbitBroker
from yarl import URL

from app.adapters.rabbit import BROKER_ERRORS

log = logging.getLogger("jobtrail.partitions")

CLOSE_TIMEOUT = 5.0
"""Seconds a partition's connection close, then its consumer's stop, may take."""

Subscribe = Callable[[RabbitBroker, int], None]
"""Registers partition ``index``'s subscriber on a new broker (app/bootstrap/worker.py)."""


class RabbitPartitionConsumers:
    """Consumes the partitions it was asked to, each on its own connection."""

    def __init__(self, url: str, subscribe: Subscribe, *, name: str = "jobtrail") -> None:
        self._url = url
        self._subscribe = subscribe
        self._name = name
        self._brokers: dict[int, tuple[RabbitBroker, AbstractConnection]] = {}

    def consuming(self) -> set[int]:
        return set(self._brokers)

    async def consume(self, partition: int) -> None:
        """Subscribe to ``partition`` (a no-op if already subscribed)."""
        if partition in self._brokers:
            return
        # The connection's name (aiormq's ``name`` query parameter) is shown by the management
        # UI and ``rabbitmqctl list_connections``: who consumes which partition.
        url = URL(self._url).update_query(name=f"{self._name} partition {partition}")
        broker = RabbitBroker(str(url), logger=log, log_level=logging.DEBUG, apply_types=False)
        self._subscribe(broker, partition)
        connection: AbstractConnection | None = None
        try:
            connection = checked_connection(await broker.connect())  # start() reuses it
            await broker.start()
        except BaseException:
            await _close(broker, connection)
            raise
        self._brokers[partition] = (broker, connection)

    async def release(self, partition: int) -> None:
        """Close ``partition``'s connection: its unacknowledged deliveries go back in order.

        The partition counts as consumed until its connection is closed: a release cut short
        (cancelled, or timed out by the caller) leaves it to be released again.
        """
        held = self._brokers.get(partition)
        if held is not None:
            await _close(*held)
            if self._brokers.get(partition) is held:
                del self._brokers[partition]

    async def close(self) -> None:
        for partition in sorted(self._brokers):
            await self.release(partition)


def checked_connection(connection: object) -> AbstractConnection:
    """``connection`` if it is an aio-pika connection; else a clear error naming FastStream."""
    if isinstance(connection, AbstractConnection):
        return connection
    raise RuntimeError(
        f"FastStream {version('faststream')}: RabbitBroker.connect() returned "
        f"{type(connection).__name__}, not an aio-pika connection; a partition cannot be handed "
        "over without closing its connection (app/adapters/rabbit_partitions.py, written for "
        "FastStream 0.7)"
    )


async def _close(broker: RabbitBroker, connection: AbstractConnection | None) -> None:
    # The connection first: FastStream's stop() would cancel the consumer before closing it.
    # Each step bounded: a broker that stops answering must not hold a hand-over or a stop up
    # (an unanswered close still drops the socket, which hands the deliveries back too).
    if connection is not None:
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await connection.close()
        except (*BROKER_ERRORS, TimeoutError) as exc:  # broken: the deliveries go back anyway
            log.warning("closing a partition connection failed: %r", exc)
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await broker.stop()
    except Exception as exc:  # FastStream groups its subscribers' errors; or timed out
        log.warning("stopping a partition consumer failed: %r", exc)

"""The broker side of the partition ring's barrier (RingBroker, aio-pika).

Each call opens what it needs on a plain (not robust) connection: the barrier runs rarely, and a
connection lost mid-way must fail the step, not replay it. The leader lock is an exclusive queue
held by the leader's connection, so RabbitMQ releases it when that connection ends, whatever
ended it.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage

from app.adapters.rabbit import (
    BARRIER_HEADER,
    BROKER_ERRORS,
    JOB_ID_HEADER,
    RING_EXCHANGE,
    UNROUTED_QUEUE,
    declare_ring,
    partition_queue,
    publish_to_queue,
)
from app.ports import PublishFailed, Unrouted

LEADER_QUEUE = "jobtrail.ring-leader"
SENTINEL_HEADER = "x-jobtrail-unrouted-end"
UNROUTED_PREFETCH = 512  # unacknowledged unrouted messages at most (take less, acknowledge)


class RabbitRing:
    """RingBroker on RabbitMQ; every broker error becomes PublishFailed."""

    def __init__(self, url: str, *, partitions: int, timeout: float = 10.0) -> None:
        self._url = url
        self._partitions = partitions
        self._timeout = timeout
        self._channel: AbstractChannel | None = None
        self._inbox: asyncio.Queue[AbstractIncomingMessage] | None = None
        self._sentinel = ""
        self._end_tag: int | None = None
        self._end_acked = False

    async def ring_exists(self) -> bool:
        try:
            async with self._connection() as connection:
                channel = await connection.channel()
                try:
                    await channel.declare_exchange(RING_EXCHANGE, passive=True)
                except aiormq.exceptions.ChannelNotFoundEntity:
                    return False
                return True
        except BROKER_ERRORS as exc:
            raise PublishFailed(f"cannot check the partition ring: {exc!r}") from exc

    @contextlib.asynccontextmanager
    async def leadership(self) -> AsyncIterator[bool]:
        try:
            connection = await aio_pika.connect(self._url, timeout=self._timeout)
        except BROKER_ERRORS as exc:
            raise PublishFailed(f"cannot reach RabbitMQ to lead the ring: {exc!r}") from exc
        try:
            try:
                lock = await connection.channel()
                await lock.declare_queue(LEADER_QUEUE, exclusive=True, auto_delete=True)
            except aiormq.exceptions.ChannelLockedResource:
                yield False
                return
            except BROKER_ERRORS as exc:
                raise PublishFailed(f"cannot take the ring leader lock: {exc!r}") from exc
            self._channel = await connection.channel(publisher_confirms=True)
            yield True
        finally:
            self._channel, self._inbox, self._end_tag, self._end_acked = None, None, None, False
            with contextlib.suppress(*BROKER_ERRORS):
                await connection.close()

    async def place_markers(self, epoch: str) -> None:
        try:
            for index in range(self._partitions):
                marker = aio_pika.Message(b"", headers={BARRIER_HEADER: epoch})
                await self._publish(marker, partition_queue(index))
        except BROKER_ERRORS as exc:
            raise PublishFailed(f"placing the ring barrier's markers failed: {exc!r}") from exc

    async def build_ring(self) -> None:
        try:
            await declare_ring(self._leader_channel(), self._partitions)
        except BROKER_ERRORS as exc:
            raise PublishFailed(f"building the partition ring failed: {exc!r}") from exc

    async def take_unrouted(self, limit: int) -> list[Unrouted]:
        """The next messages of the unrouted queue, up to the sentinel this leader appended.

        A consumer, not basic.get: RabbitMQ 3.10 gives the messages a closed channel had taken
        with basic.get back to a quorum queue in no particular order, but a consumer's in the
        order they were delivered. The queue gets nothing new once the ring is built, so the
        sentinel, appended then, marks its end exactly.
        """
        try:
            inbox = await self._unrouted_inbox()
            taken: list[Unrouted] = []
            while self._end_tag is None and len(taken) < limit:
                if taken and inbox.empty():
                    break  # hand over what came; the next call waits for more
                message = await asyncio.wait_for(inbox.get(), self._timeout * 3)
                assert message.delivery_tag is not None
                mark = (message.headers or {}).get(SENTINEL_HEADER)
                if mark == self._sentinel:
                    self._end_tag = message.delivery_tag
                    break
                if mark is not None:
                    continue  # a dead leader's sentinel: acknowledged with what follows it
                keyed = JOB_ID_HEADER in (message.headers or {})
                taken.append(Unrouted(bytes(message.body), keyed, message.delivery_tag))
            if not taken and self._end_tag is not None and not self._end_acked:
                await self._ack(self._end_tag)  # every message before it is acknowledged
                self._end_acked = True
        except TimeoutError as exc:
            raise PublishFailed(f"{UNROUTED_QUEUE}: its sentinel did not come back") from exc
        except BROKER_ERRORS as exc:
            raise PublishFailed(f"reading {UNROUTED_QUEUE} failed: {exc!r}") from exc
        return taken

    async def ack_unrouted(self, messages: Sequence[Unrouted]) -> None:
        if not messages:
            return
        try:
            await self._ack(max(m.tag for m in messages))
        except BROKER_ERRORS as exc:
            raise PublishFailed(f"acknowledging {UNROUTED_QUEUE} messages failed: {exc!r}") from exc

    async def _ack(self, tag: int) -> None:
        underlying = await self._leader_channel().get_underlay_channel()
        await underlying.basic_ack(tag, multiple=True)

    async def _unrouted_inbox(self) -> asyncio.Queue[AbstractIncomingMessage]:
        if self._inbox is not None:
            return self._inbox
        channel = self._leader_channel()
        inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        self._sentinel = uuid.uuid4().hex
        await self._publish(
            aio_pika.Message(b"", headers={SENTINEL_HEADER: self._sentinel}), UNROUTED_QUEUE
        )
        await channel.set_qos(prefetch_count=UNROUTED_PREFETCH)
        queue = await channel.get_queue(UNROUTED_QUEUE, ensure=False)
        await queue.consume(inbox.put)
        self._inbox = inbox
        return inbox

    async def _publish(self, message: aio_pika.Message, queue: str) -> None:
        message.delivery_mode = aio_pika.DeliveryMode.PERSISTENT
        await publish_to_queue(self._leader_channel(), message, queue, self._timeout)

    def _leader_channel(self) -> AbstractChannel:
        if self._channel is None:
            raise PublishFailed("the ring's barrier steps need the leader lock")
        return self._channel

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[AbstractConnection]:
        connection = await aio_pika.connect(self._url, timeout=self._timeout)
        try:
            yield connection
        finally:
            with contextlib.suppress(*BROKER_ERRORS):
                await connection.close()

"""BatchAcks against a real RabbitMQ: out-of-order finishing and a nack in the middle leave
nothing unacknowledged, and never make the broker close the channel (a multiple-ack naming a
tag that is not outstanding would)."""

from __future__ import annotations

import asyncio
import random

import aio_pika

from app.adapters import rabbit
from app.adapters.rabbit_acks import BatchAcks

COUNT = 200


async def _acks_accepted(channel: aio_pika.abc.AbstractChannel, queue: str) -> None:
    """A synchronous method on the acknowledging channel after its acks. The broker handles a
    channel's frames in order, so by its answer every ack before it was taken, or the channel
    was closed for it (PRECONDITION_FAILED, unknown delivery tag) and the call fails."""
    try:
        await channel.declare_queue(queue, passive=True)
    except aio_pika.exceptions.AMQPError as exc:
        raise AssertionError(f"the broker refused an acknowledgement: {exc!r}") from exc


async def test_every_delivery_is_acknowledged_and_the_channel_stays_open(rabbit_url: str) -> None:
    connection = await aio_pika.connect(rabbit_url)
    try:
        channel = await connection.channel()
        await rabbit.declare_topology(channel, 1, ring=False)
        queue = await channel.declare_queue(
            rabbit.partition_queue(0), durable=True, arguments=rabbit.TRACKER_QUEUE_ARGS
        )
        for n in range(COUNT):
            await channel.default_exchange.publish(
                aio_pika.Message(str(n).encode()), routing_key=queue.name
            )
        consumer = await connection.channel()
        await consumer.set_qos(prefetch_count=COUNT + 10)
        their_queue = await consumer.get_queue(queue.name)
        got: list[aio_pika.abc.AbstractIncomingMessage] = []
        arrived = asyncio.Event()

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            got.append(message)
            if len(got) >= COUNT + 1:
                arrived.set()

        tag = await their_queue.consume(on_message)
        async with asyncio.timeout(20):
            while len(got) < COUNT:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        acks = BatchAcks()
        first = list(got)
        failed = first[COUNT // 2]
        random.Random(7).shuffle(first)
        await acks.nack(failed)  # redelivered to this consumer, with a new tag
        await asyncio.gather(*(acks.ack(m) for m in first[:50] if m is not failed))
        for message in first[50:]:
            if message is not failed:
                await acks.ack(message)
        async with asyncio.timeout(20):
            await arrived.wait()
        again = got[COUNT]
        assert again.body == failed.body and again.redelivered
        await acks.ack(again)
        await _acks_accepted(consumer, queue.name)
        assert not consumer.is_closed, "the broker refused an acknowledgement"
        await their_queue.cancel(tag)
        await consumer.close()  # anything still unacknowledged goes back to the queue
        declared = await channel.declare_queue(queue.name, passive=True)
        assert declared.declaration_result.message_count == 0
    finally:
        await connection.close()


async def test_a_nack_at_the_end_of_a_run_is_not_acknowledged(rabbit_url: str) -> None:
    """Tags 1, 2, 3: ack 1, nack 2, ack 3. A multiple-ack of 2 would close the channel."""
    connection = await aio_pika.connect(rabbit_url)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue("jt-acks", durable=True)
        for n in range(3):
            await channel.default_exchange.publish(
                aio_pika.Message(str(n).encode()), routing_key=queue.name
            )
        consumer = await connection.channel()
        their_queue = await consumer.get_queue(queue.name)
        got = [await their_queue.get(timeout=5) for _ in range(3)]
        assert [m.delivery_tag for m in got if m is not None] == [1, 2, 3]
        one, two, three = (m for m in got if m is not None)
        acks = BatchAcks()
        await acks.ack(one)
        await acks.nack(two)
        await _acks_accepted(consumer, queue.name)
        assert not consumer.is_closed, "the broker refused an acknowledgement"
        await acks.ack(three)
        await _acks_accepted(consumer, queue.name)
        assert not consumer.is_closed
        await consumer.close()
        declared = await channel.declare_queue(queue.name, passive=True)
        assert declared.declaration_result.message_count == 1, "only the nacked one is left"
    finally:
        await connection.close()

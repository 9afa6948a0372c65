"""BatchAcks (app/adapters/rabbit_acks.py) on a fake channel: which multiple-acks it sends."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from app.adapters.rabbit_acks import BatchAcks


@dataclass(eq=False)
class Channel:
    acks: list[int] = field(default_factory=list)
    closed: bool = False

    async def basic_ack(self, tag: int, multiple: bool = False) -> None:
        assert multiple
        if self.closed:
            raise RuntimeError("channel closed")
        self.acks.append(tag)


@dataclass(eq=False)
class Message:
    channel_: Channel
    delivery_tag: int
    nacked: bool = False

    @property
    def channel(self) -> Channel:
        if self.channel_.closed:
            raise RuntimeError("channel closed")  # as aio-pika does (ChannelInvalidStateError)
        return self.channel_

    async def nack(self, requeue: bool) -> None:
        assert requeue
        self.nacked = True


async def test_a_burst_of_finished_deliveries_is_acknowledged_with_one_frame() -> None:
    acks, channel = BatchAcks(), Channel()
    await asyncio.gather(*(acks.ack(Message(channel, tag)) for tag in range(1, 301)))
    assert channel.acks == [300]


async def test_nothing_is_acknowledged_before_every_earlier_delivery_finished() -> None:
    acks, channel = BatchAcks(), Channel()
    await acks.ack(Message(channel, 2))  # returns at once: 1 is still in flight
    await acks.ack(Message(channel, 3))
    assert channel.acks == []
    await acks.ack(Message(channel, 1))  # finishes the run: 1, 2 and 3 in one frame
    assert channel.acks == [3]
    await acks.ack(Message(channel, 4))
    assert channel.acks == [3, 4]


async def test_a_nacked_delivery_is_never_named_in_a_multiple_ack() -> None:
    acks, channel = BatchAcks(), Channel()
    await acks.ack(Message(channel, 1))
    failed = Message(channel, 2)
    await acks.nack(failed)
    assert failed.nacked and channel.acks == [1], "2 is not outstanding any more: not named"
    await acks.ack(Message(channel, 3))
    assert channel.acks == [1, 3]
    await acks.nack(Message(channel, 5))
    await acks.nack(Message(channel, 4))
    assert channel.acks == [1, 3], "nothing new to acknowledge"


async def test_each_channel_counts_its_own_tags() -> None:
    """A robust channel reopened after a reconnection starts its tags at 1 again."""
    acks, old, new = BatchAcks(), Channel(), Channel()
    await acks.ack(Message(old, 1))
    await acks.ack(Message(old, 3))  # 2 never finishes: the old channel closes
    await acks.ack(Message(new, 1))
    assert (old.acks, new.acks) == ([1], [1])


async def test_a_closed_channel_is_not_an_error() -> None:
    acks, channel = BatchAcks(), Channel()
    await acks.ack(Message(channel, 1))
    channel.closed = True
    await acks.ack(Message(channel, 2))  # the broker redelivers it; nothing to do here
    await acks.nack(Message(channel, 3))
    assert channel.acks == [1]


async def test_a_frame_that_cannot_be_sent_is_not_an_error() -> None:
    """The channel closes between the handler's report and the frame: the broker redelivers."""
    acks = BatchAcks()
    channel = Channel()
    message = Message(channel, 1)

    async def refuse(tag: int, multiple: bool = False) -> None:
        raise RuntimeError("channel closed")

    channel.basic_ack = refuse  # type: ignore[method-assign]
    await acks.ack(message)
    assert channel.acks == []


@pytest.mark.parametrize("order", [[3, 1, 2], [2, 3, 1], [1, 3, 2]])
async def test_any_finishing_order_ends_with_everything_acknowledged(order: list[int]) -> None:
    acks, channel = BatchAcks(), Channel()
    for tag in order:
        await acks.ack(Message(channel, tag))
    assert channel.acks[-1] == 3
    assert channel.acks == sorted(channel.acks)

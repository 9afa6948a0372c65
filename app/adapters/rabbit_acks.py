"""Acknowledge a batch of deliveries with one multiple-ack (AMQP ``basic.ack``, multiple=true).

A partition's deliveries finish in bursts: a whole micro-batch is committed at once. Instead of
one ``basic.ack`` each, the handlers of a burst report their delivery tags here and the highest
tag below which every delivery of the channel has finished is acknowledged once, with
``multiple``: fewer frames for the tracker to write and for RabbitMQ to process.

Delivery tags count up from 1 on each channel, so this keeps the state per channel (a robust
channel reopened after a reconnection starts again at 1). A delivery that did not finish (a
held one, or one whose handler failed and nacked it) stops the acknowledgement at the tag below
it: nothing is ever acknowledged before it is recorded.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from weakref import WeakKeyDictionary

from app.adapters.rabbit import BROKER_ERRORS

log = logging.getLogger("jobtrail.rabbit")


class _ChannelAcks:
    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self.top = 0
        """Every delivery tag up to here has finished (acknowledged or nacked, or about to be)."""
        self.ackable = 0
        """The highest finished tag up to ``top`` that was not nacked."""
        self.acked = 0
        """The tag of the last multiple-ack sent."""
        self.finished: dict[int, bool] = {}
        self.pending: asyncio.Future[None] | None = None

    def finish(self, tag: int, *, ack: bool) -> asyncio.Future[None] | None:
        """Mark ``tag`` finished; the acknowledgement to wait for, or None if none is due."""
        self.finished[tag] = ack
        while self.top + 1 in self.finished:
            self.top += 1
            if self.finished.pop(self.top):
                self.ackable = self.top
        if tag > self.top or self.ackable <= self.acked:
            # A delivery before it is still in flight (the one finishing it acknowledges both),
            # or nothing new to acknowledge (a nacked tag is not outstanding any more: a
            # multiple-ack naming it would be refused and close the channel).
            return None
        if self.pending is None:
            # Coalesce every delivery finishing in this turn of the loop into one frame.
            self.pending = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_soon(self._flush)
        return self.pending

    def _flush(self) -> None:
        done, self.pending = self.pending, None
        assert done is not None
        self.acked = self.ackable
        task = asyncio.ensure_future(self.channel.basic_ack(self.acked, multiple=True))
        task.add_done_callback(lambda t: _settle(t, done))


def _settle(task: asyncio.Future[Any], done: asyncio.Future[None]) -> None:
    if task.cancelled():
        done.cancel()
    elif (exc := task.exception()) is not None:
        if isinstance(exc, BROKER_ERRORS):  # the channel went away: the broker redelivers
            log.debug("a multiple-ack was not sent: %r", exc)
            done.set_result(None)
        else:
            done.set_exception(exc)
    else:
        done.set_result(None)


class BatchAcks:
    """Acknowledges deliveries (aio-pika messages) by multiple-ack, per channel."""

    def __init__(self) -> None:
        self._channels: WeakKeyDictionary[Any, _ChannelAcks] = WeakKeyDictionary()

    async def ack(self, message: Any) -> None:
        """Acknowledge ``message`` once every delivery before it on its channel is done.

        Returns when the acknowledgement covering it is written, or at once if a delivery before
        it is still in flight (whoever finishes that one acknowledges both).
        """
        waiting = self.finish(message, ack=True)
        if waiting is not None:
            await asyncio.shield(waiting)

    async def nack(self, message: Any) -> None:
        """Give ``message`` back to the queue (its handler failed); later ones may be acked."""
        try:
            await message.nack(requeue=True)
        except BROKER_ERRORS as exc:
            log.debug("a nack was not sent: %r", exc)
        waiting = self.finish(message, ack=False)
        if waiting is not None:
            await asyncio.shield(waiting)

    def finish(self, message: Any, *, ack: bool) -> asyncio.Future[None] | None:
        """``ack`` without waiting: the future of the acknowledgement covering ``message``,
        or None if none is due from it (a nack must have been sent before)."""
        try:
            channel = message.channel
        except BROKER_ERRORS:
            return None  # the channel is closed: the broker redelivers what it did not see acked
        acks = self._channels.get(channel)
        if acks is None:
            acks = self._channels[channel] = _ChannelAcks(channel)
        return acks.finish(message.delivery_tag, ack=ack)

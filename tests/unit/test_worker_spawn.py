"""The partition handler's follow-up tasks always end their delivery's count.

A delivery counted in flight (``Ingestor.begin``) that is never ended holds a partition's
hand-over forever (``Ingestor.settled``). After a fast-path delivery's batch fails, its
quarantine or give-back runs as a task of its channel (app/bootstrap/worker.py ``_spawn``): the
count must end however that task ends, including cancelled before its first step, and when the
channel is already closed.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiormq.exceptions import ChannelInvalidStateError

from app.bootstrap.worker import _spawn


class _Channel:
    """Makes its tasks as aiormq's channel does, and keeps them: a test awaits their end."""

    def __init__(self) -> None:
        self.tasks: list[asyncio.Task[None]] = []

    def create_task(self, coro: Any) -> asyncio.Task[None]:
        self.tasks.append(task := asyncio.get_running_loop().create_task(coro))
        return task


class _Message:
    def __init__(self, channel: _Channel | None) -> None:
        self._channel = channel

    @property
    def channel(self) -> _Channel:
        if self._channel is None:
            raise ChannelInvalidStateError("closed")
        return self._channel


async def test_ended_once_the_task_ends() -> None:
    ran, ended = [], []

    async def work() -> None:
        ran.append(True)

    channel = _Channel()
    _spawn(_Message(channel), work(), lambda: ended.append(True))  # type: ignore[arg-type]
    await asyncio.wait(channel.tasks)  # its done callbacks ran before this wait's own
    assert ran == [True] and ended == [True]


async def test_ended_when_the_task_is_cancelled_before_its_first_step() -> None:
    ran, ended = [], []

    async def work() -> None:
        try:
            ran.append(True)
        finally:
            ran.append("finally")

    channel = _Channel()
    _spawn(_Message(channel), work(), lambda: ended.append(True))  # type: ignore[arg-type]
    channel.tasks[0].cancel()  # the channel closed in the same turn of the loop
    await asyncio.wait(channel.tasks)  # its done callbacks ran before this wait's own
    assert ran == [], "the work never started, so its own finally never ran"
    assert ended == [True]


async def test_ended_at_once_when_the_channel_is_closed() -> None:
    ended: list[bool] = []

    async def work() -> None:
        raise AssertionError("must not run")

    _spawn(_Message(None), work(), lambda: ended.append(True))  # type: ignore[arg-type]
    assert ended == [True]

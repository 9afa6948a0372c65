"""A clock the test moves itself: deterministic waits for code that takes a clock and a sleep.

Code under test asks ``now()`` and waits with ``sleep(seconds)``; nothing it waits for passes
until the test calls ``advance``. "It never happened" then means "it did not happen while the
test moved the clock through every moment at which it could have", not "not within 0.3 s of
real time on whatever machine ran the test".
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from datetime import UTC, datetime, timedelta

T0 = datetime(2026, 1, 1, tzinfo=UTC)


async def run_ready(rounds: int = 50) -> None:
    """Let every task that can run, run until it waits again (in-memory fakes: no real I/O)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


class ManualClock:
    """A Clock (``now``) with a ``sleep`` that returns only once the test advanced past it."""

    def __init__(self, at: datetime = T0) -> None:
        self.at = at
        self._sleepers: list[tuple[datetime, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def now(self) -> datetime:
        return self.at

    def seconds(self) -> float:
        """The clock as seconds (what InMemoryMembership takes)."""
        return self.at.timestamp()

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        due = self.at + timedelta(seconds=seconds)
        heapq.heappush(self._sleepers, (due, next(self._order), woken))
        await woken

    async def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` on, waking each sleeper at its moment, in order."""
        end = self.at + timedelta(seconds=seconds)
        await run_ready()
        while self._sleepers and self._sleepers[0][0] <= end:
            due, _, woken = heapq.heappop(self._sleepers)
            if woken.done():  # its sleeper was cancelled
                continue
            self.at = max(self.at, due)
            woken.set_result(None)
            await run_ready()
        self.at = end
        await run_ready()

"""Exponential backoff with a cap: the waits of every loop that retries after a failure.

One shape for them all: a first delay, a factor (2), a cap, and optionally full jitter (a random
wait up to the delay, so writers that lost the same race spread out). The sleep is injected
(``asyncio.sleep`` by default, a test's ``ManualClock.sleep``), so tests drive the waits.

It imports nothing from the rest of ``app``: the services' loops and the adapters both use it.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

Sleep = Callable[[float], Awaitable[None]]
"""Waits that many seconds."""
Jitter = Callable[[float], float]
"""Turns a delay into the wait actually slept."""


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delays of ``initial``, ``initial * factor``, ... seconds, each at most ``cap``."""

    initial: float
    cap: float
    factor: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.cap:
            raise ValueError(f"backoff: need 0 < initial <= cap, not {self.initial}, {self.cap}")
        if self.factor < 1:
            raise ValueError(f"backoff: the factor must be at least 1, not {self.factor}")

    def after(self, delay: float) -> float:
        """The delay that follows ``delay``."""
        return min(delay * self.factor, self.cap)

    def nth(self, attempt: int) -> float:
        """The delay after ``attempt`` earlier failures (``initial`` after none)."""
        delay = self.initial
        for _ in range(attempt):
            if delay >= self.cap:
                break
            delay = self.after(delay)
        return delay

    def waits(self, sleep: Sleep = asyncio.sleep, jitter: Jitter | None = None) -> Waits:
        """A fresh run of waits (one per loop, or per batch being retried)."""
        return Waits(self, sleep, jitter)


@dataclass(slots=True)
class Waits:
    """One loop's waits: ``wait`` after each failure (longer each time), ``reset`` on success."""

    backoff: Backoff
    sleep: Sleep = asyncio.sleep
    jitter: Jitter | None = None
    delay: float = field(init=False)
    """The delay of the next ``wait`` (what a log line announces)."""

    def __post_init__(self) -> None:
        self.delay = self.backoff.initial

    async def wait(self) -> float:
        """Sleep the current delay (jittered, if so made), then lengthen it; the seconds slept."""
        slept = self.delay if self.jitter is None else self.jitter(self.delay)
        await self.sleep(slept)
        self.delay = self.backoff.after(self.delay)
        return slept

    def reset(self) -> None:
        """Start again from ``initial`` (the loop succeeded)."""
        self.delay = self.backoff.initial


def full_jitter(delay: float, rng: random.Random | None = None) -> float:
    """A random wait between 0 and ``delay`` (``rng``: a seeded one, in tests)."""
    uniform = random.uniform if rng is None else rng.uniform
    return uniform(0, delay)

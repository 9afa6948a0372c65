"""The one backoff helper (app/backoff.py): capped, growing, reset by a success; jitter stays in."""

from __future__ import annotations

import asyncio
import itertools
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.backoff import Backoff, Waits, full_jitter

backoffs = st.builds(
    lambda initial, span, factor: Backoff(initial, initial * span, factor),
    st.floats(min_value=1e-4, max_value=10.0),
    st.floats(min_value=1.0, max_value=1e4),
    st.floats(min_value=1.0, max_value=4.0),
)
outcomes = st.lists(st.booleans(), max_size=60)
"""A loop's passes: True succeeded (reset), False failed (wait)."""


class Recorder:
    """A sleep that returns at once and notes what it was asked to wait."""

    def __init__(self) -> None:
        self.slept: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.slept.append(seconds)


def drive(waits: Waits, passes: list[bool]) -> list[list[float]]:
    """Run ``passes`` through ``waits``; the waits slept between successes, one list per streak."""

    async def run() -> list[list[float]]:
        streaks: list[list[float]] = [[]]
        for succeeded in passes:
            if succeeded:
                waits.reset()
                streaks.append([])
            else:
                streaks[-1].append(await waits.wait())
        return streaks

    return asyncio.run(run())


@given(backoffs, outcomes)
def test_no_wait_exceeds_the_cap(backoff: Backoff, passes: list[bool]) -> None:
    sleep = Recorder()
    drive(backoff.waits(sleep), passes)
    assert all(0 < s <= backoff.cap for s in sleep.slept)
    assert len(sleep.slept) == passes.count(False)


@given(backoffs, outcomes)
def test_waits_grow_until_the_cap_and_start_over_after_a_success(
    backoff: Backoff, passes: list[bool]
) -> None:
    for streak in drive(backoff.waits(Recorder()), passes):
        assert streak[:1] in ([], [backoff.initial]), "every streak starts from the first delay"
        for n, (before, after) in enumerate(itertools.pairwise(streak)):
            assert after == min(before * backoff.factor, backoff.cap)
            assert after >= before
            if before < backoff.cap and backoff.factor > 1:
                assert after > before, "strictly longer until the cap"
            assert after == backoff.nth(n + 1)


@given(backoffs, st.integers(min_value=0, max_value=10_000))
def test_the_nth_delay_is_capped_and_reaches_the_cap(backoff: Backoff, attempt: int) -> None:
    delay = backoff.nth(attempt)
    assert backoff.initial <= delay <= backoff.cap
    assert backoff.nth(attempt + 1) >= delay
    if backoff.factor >= 2:
        # At most log2(cap / initial) <= 14 doublings (the strategy's span is at most 1e4).
        assert backoff.nth(15) == backoff.cap


@given(backoffs, outcomes, st.integers(min_value=0, max_value=2**32))
def test_jittered_waits_stay_between_zero_and_the_delay(
    backoff: Backoff, passes: list[bool], seed: int
) -> None:
    rng = random.Random(seed)
    sleep = Recorder()
    plain = drive(backoff.waits(Recorder()), passes)
    drive(backoff.waits(sleep, jitter=lambda d: full_jitter(d, rng)), passes)
    delays = [d for streak in plain for d in streak]
    assert len(sleep.slept) == len(delays)
    assert all(0 <= s <= d <= backoff.cap for s, d in zip(sleep.slept, delays, strict=True))


def test_a_wait_announces_its_delay_before_sleeping_it() -> None:
    waits = Backoff(0.1, 5.0).waits(Recorder())
    announced = []
    for _ in range(8):
        announced.append(waits.delay)
        asyncio.run(waits.wait())
    assert announced == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]


@pytest.mark.parametrize(("initial", "cap", "factor"), [(0, 1, 2), (2, 1, 2), (1, 2, 0.5)])
def test_a_backoff_that_cannot_work_is_refused(initial: float, cap: float, factor: float) -> None:
    with pytest.raises(ValueError, match="backoff: "):
        Backoff(initial, cap, factor)

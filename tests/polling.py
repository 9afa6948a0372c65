"""One poller for async tests that wait on a condition no event announces."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable


async def until(
    check: Callable[[], bool | Awaitable[bool]],
    what: str,
    *,
    within: float = 60,
    every: float = 0.05,
) -> None:
    """Poll ``check`` (plain or async) every ``every`` seconds until it is true; after
    ``within`` seconds fail naming ``what`` was awaited."""
    try:
        async with asyncio.timeout(within):
            while True:
                answer = check()
                if inspect.isawaitable(answer):
                    answer = await answer
                if answer:
                    return
                await asyncio.sleep(every)
    except TimeoutError:
        raise AssertionError(f"timed out after {within:g} s waiting for {what}") from None

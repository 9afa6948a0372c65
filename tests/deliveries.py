"""Counting the deliveries a tracker's partition handlers give its ingestor.

A delivery goes through ``Ingestor.accept_soon`` (the handler's fast path) or, when that steps
aside (answers None), through ``Ingestor.accept``: wrapping both, each delivery is counted once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from app.services.ingest import Ingestor


def count_deliveries(ingestor: Ingestor, seen: Callable[[bytes, bool], None]) -> None:
    """Call ``seen(body, keyed)`` once for each delivery ``ingestor`` is given from now on."""
    accept, accept_soon = ingestor.accept, ingestor.accept_soon

    def counting_accept_soon(body: bytes, **kwargs: Any) -> Any:
        done = accept_soon(body, **kwargs)
        if done is not None:
            seen(body, kwargs["keyed"])
        return done

    async def counting_accept(body: bytes, **kwargs: Any) -> None:
        seen(body, kwargs.get("keyed", True))
        await accept(body, **kwargs)

    ingestor.accept = counting_accept  # type: ignore[method-assign]
    ingestor.accept_soon = counting_accept_soon  # type: ignore[method-assign]

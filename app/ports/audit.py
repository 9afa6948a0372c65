"""The auditors' ports: the log read by recording time, and the daily anchors beside it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import date, datetime
from typing import Protocol

from app.domain.merkle import Anchor, Leaf


class RecordedRange(Protocol):
    """Reads log entries by the time they were recorded (an index the per-job port lacks)."""

    def scan_recorded(self, since: datetime, until: datetime) -> AsyncIterator[Leaf]:
        """Entries with since <= recorded_at < until, ordered by (recorded_at, job_id, seq)."""
        ...


class AnchorStore(Protocol):
    """Insert-only storage of daily anchors, next to the log they digest."""

    async def ensure_schema(self) -> None:
        """Create the anchors collection / table and its unique day key if missing."""
        ...

    async def add(self, anchor: Anchor) -> Anchor | None:
        """Store ``anchor``; None if stored, else the anchor already stored for its day (kept)."""
        ...

    async def list_anchors(self, since: date | None = None) -> list[Anchor]:
        """Stored anchors (from ``since`` on), by day; none if nothing was ever anchored."""
        ...


class AnchorBackend(AnchorStore, RecordedRange, Protocol):
    """An anchor store that also reads the log beside it by recording time (what ``anchor``
    and ``verify --anchors`` open)."""

    async def close(self) -> None: ...

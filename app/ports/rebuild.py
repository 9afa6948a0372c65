"""The rebuild port: fresh projection tables beside the live ones, compared and swapped."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from app.ports.projection import AttemptRow, JobRow, ProjectionUpdate, TimerRow


class Side(StrEnum):
    LIVE = "live"
    FRESH = "fresh"


@dataclass(frozen=True, slots=True)
class JobBundle:
    """Everything the projection holds about one job: its row, its attempts, its timer."""

    job_id: str
    job: JobRow | None
    attempts: tuple[AttemptRow, ...] = ()
    timer: TimerRow | None = None


class RebuildTarget(Protocol):
    """Fresh projection tables beside the live ones, and the swap between them."""

    async def prepare(self) -> None:
        """Create empty fresh tables (dropping leftovers of an interrupted rebuild)."""
        ...

    async def write(self, updates: Sequence[ProjectionUpdate]) -> None:
        """Insert these jobs' rows into the fresh tables (each job exactly once)."""
        ...

    def bundles(self, side: Side) -> AsyncIterator[JobBundle]:
        """Every job of one side ordered by job_id, in constant memory."""
        ...

    async def same_rows(self) -> bool:
        """Whether the fresh tables hold exactly the live rows (compared where they are)."""
        ...

    async def swap(self) -> None:
        """Make the fresh tables live in one transaction; keep the old ones as ``*__previous``."""
        ...

    async def discard(self) -> None:
        """Drop the fresh tables."""
        ...

    async def close(self) -> None: ...

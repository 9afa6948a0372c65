"""The event log port and what it exchanges; the clock every service reads time from."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from app.domain.chain import RecordedEvent, StoredEvent
from app.domain.events import JobEvent


class AppendStatus(StrEnum):
    APPENDED = "appended"
    DUPLICATE = "duplicate"


@dataclass(frozen=True, slots=True)
class AppendOutcome:
    """What ``append`` did: ``seq`` is the stored entry's seq whether new or a duplicate."""

    event_id: str
    job_id: str
    status: AppendStatus
    seq: int
    entry: RecordedEvent | None = field(default=None, compare=False)
    """The entry stored, with the event as given (APPENDED only): what reading it back returns,
    so a writer can fold what it just appended without that read."""


class Clock(Protocol):
    def now(self) -> datetime:
        """The current instant, timezone-aware UTC."""
        ...


class EventLog(Protocol):
    """Append-only, per-job hash-chained event log. Insert and find only; never update or delete."""

    async def ensure_schema(self) -> None:
        """Create indexes / tables if missing (idempotent)."""
        ...

    async def append(self, event: JobEvent, recorded_at: datetime) -> AppendOutcome:
        """Store ``event`` as the job's next seq; a known event_id is a no-op reporting DUPLICATE.

        ``recorded_at`` is truncated to milliseconds before it is stored and hashed.
        Concurrent appends to one job conflict on (job_id, seq) and are retried inside.
        """
        ...

    async def append_many(
        self, events: Sequence[JobEvent], recorded_at: datetime
    ) -> list[AppendOutcome]:
        """``append`` for each event, in order; per-job order is the order given."""
        ...

    async def read_job(self, job_id: str, *, until: datetime | None = None) -> list[RecordedEvent]:
        """The job's events in seq order (only those recorded at or before ``until`` if given)."""
        ...

    async def read_jobs(self, job_ids: Sequence[str]) -> dict[str, list[RecordedEvent]]:
        """Several jobs' events in seq order, in one round trip; every id is a key (maybe [])."""
        ...

    async def read_jobs_from(self, starts: Mapping[str, int]) -> dict[str, list[RecordedEvent]]:
        """Each job's events from seq ``starts[job_id]`` on (that entry included, so its hash
        can be compared), in seq order, in one round trip; every id is a key (maybe [])."""
        ...

    async def read_job_raw(self, job_id: str) -> list[StoredEvent]:
        """The job's entries as stored, in seq order, without decoding (for verification)."""
        ...

    def scan_raw(self, after_job: str | None = None) -> AsyncIterator[StoredEvent]:
        """Every entry as stored, ordered by (job_id, seq), in constant memory.

        With ``after_job``, only the entries of the jobs ordered after it (a paged reader's
        resumption point, through the (job_id, seq) index).
        """
        ...

    def scan(self) -> AsyncIterator[RecordedEvent]:
        """Every event decoded, ordered by (job_id, seq), in constant memory."""
        ...

    def scan_range(
        self, since: datetime | None, until: datetime | None
    ) -> AsyncIterator[RecordedEvent]:
        """Events recorded in [since, until), ordered by (recorded_at, job_id, seq), paged."""
        ...

    async def count(self) -> int:
        """How many entries the log holds."""
        ...

    async def close(self) -> None: ...

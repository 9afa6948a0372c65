"""The in-memory EventLog: the reference fake of the port.

``InMemoryEventLog`` stores canonical JSON text and hashes it exactly as the MongoDB and SQL
adapters do (the rules they share are in app/adapters/log_entries.py), and is held to the same
contract tests.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime

from app.adapters.log_entries import (
    DEFAULT_PAGE_SIZE,
    appended,
    chain_entry,
    decode_entry,
    duplicate,
    truncate_ms,
)
from app.domain.chain import RecordedEvent, StoredEvent
from app.domain.events import JobEvent
from app.ports import AppendOutcome


class InMemoryEventLog:
    """EventLog held in process memory; appends are atomic because they never await."""

    def __init__(self, *, page_size: int = DEFAULT_PAGE_SIZE) -> None:
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        self._page_size = page_size
        self._jobs: dict[str, list[StoredEvent]] = {}
        self._by_event_id: dict[str, StoredEvent] = {}

    async def ensure_schema(self) -> None:
        return None

    async def append(self, event: JobEvent, recorded_at: datetime) -> AppendOutcome:
        return self._append(event, truncate_ms(recorded_at))

    async def append_many(
        self, events: Sequence[JobEvent], recorded_at: datetime
    ) -> list[AppendOutcome]:
        at = truncate_ms(recorded_at)
        return [self._append(event, at) for event in events]

    def _append(self, event: JobEvent, recorded_at: datetime) -> AppendOutcome:
        known = self._by_event_id.get(str(event.event_id))
        if known is not None:
            return duplicate(known.event_id, known.job_id, known.seq)
        entries = self._jobs.setdefault(event.job_id, [])
        tip = entries[-1] if entries else None
        entry = (
            chain_entry(event, recorded_at)
            if tip is None
            else chain_entry(event, recorded_at, tip.seq, tip.hash)
        )
        entries.append(entry)
        self._by_event_id[entry.event_id] = entry
        return appended(entry, event)

    async def read_job(self, job_id: str, *, until: datetime | None = None) -> list[RecordedEvent]:
        entries = self._jobs.get(job_id, [])
        if until is not None:
            entries = [entry for entry in entries if entry.recorded_at <= until]
        return [decode_entry(entry) for entry in entries]

    async def read_jobs(self, job_ids: Sequence[str]) -> dict[str, list[RecordedEvent]]:
        return {job_id: await self.read_job(job_id) for job_id in job_ids}

    async def read_jobs_from(self, starts: Mapping[str, int]) -> dict[str, list[RecordedEvent]]:
        return {
            job_id: [decode_entry(e) for e in self._jobs.get(job_id, []) if e.seq >= start]
            for job_id, start in starts.items()
        }

    async def read_job_raw(self, job_id: str) -> list[StoredEvent]:
        return list(self._jobs.get(job_id, []))

    async def scan_range(
        self, since: datetime | None, until: datetime | None
    ) -> AsyncIterator[RecordedEvent]:
        entries = [
            e
            for chain in self._jobs.values()
            for e in chain
            if (since is None or e.recorded_at >= since)
            and (until is None or e.recorded_at < until)
        ]
        for entry in sorted(entries, key=lambda e: (e.recorded_at, e.job_id, e.seq)):
            yield decode_entry(entry)

    async def scan_raw(self, after_job: str | None = None) -> AsyncIterator[StoredEvent]:
        # Seqs are positive: (job, 0) is before a job's first entry, (job, inf) after its last.
        cursor: tuple[str, float] = ("", 0) if after_job is None else (after_job, math.inf)
        while page := self._page_after(cursor):
            for entry in page:
                yield entry
            cursor = (page[-1].job_id, page[-1].seq)

    def _page_after(self, cursor: tuple[str, float]) -> list[StoredEvent]:
        """Keyset paging as the real adapters do it: the entries after ``cursor``."""
        page: list[StoredEvent] = []
        for job_id in sorted(job for job in self._jobs if job >= cursor[0]):
            for entry in self._jobs[job_id]:
                if (entry.job_id, entry.seq) > cursor:
                    page.append(entry)
                    if len(page) == self._page_size:
                        return page
        return page

    async def scan(self) -> AsyncIterator[RecordedEvent]:
        async for entry in self.scan_raw():
            yield decode_entry(entry)

    async def count(self) -> int:
        return len(self._by_event_id)

    async def close(self) -> None:
        return None

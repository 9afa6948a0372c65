"""The in-memory EventLog, and the chain rules every EventLog adapter shares.

``InMemoryEventLog`` is the reference fake: it stores canonical JSON text and hashes it exactly
as the MongoDB and SQL adapters do, and is held to the same contract tests.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from app.backoff import Backoff, full_jitter
from app.domain.chain import GENESIS_HASH, RecordedEvent, StoredEvent, link_hash
from app.domain.events import JobEvent, canonical_json, parse_event
from app.ports import AppendOutcome, AppendStatus

MAX_APPEND_TRIES = 100
"""How often an append re-reads the job's tip after losing a (job_id, seq) race."""
CONFLICT_BACKOFF = Backoff(0.001, 0.05)
"""Between those tries: a random pause up to 1 ms, doubling to 50 ms (``conflict_pause``)."""

DEFAULT_PAGE_SIZE = 1000


def truncate_ms(moment: datetime) -> datetime:
    """``moment`` in UTC, cut to whole milliseconds (the precision a BSON date holds exactly)."""
    if moment.tzinfo is None:
        raise ValueError("recorded_at must be timezone-aware")
    utc = moment.astimezone(UTC)
    return utc.replace(microsecond=utc.microsecond - utc.microsecond % 1000)


def entry_fields(entry: StoredEvent) -> dict[str, Any]:
    """What a stored entry holds, as a document or a row: the chain, the data, query fields."""
    return {
        "event_id": entry.event_id,
        "job_id": entry.job_id,
        "seq": entry.seq,
        "type": entry.type,
        "attempt": entry.attempt,
        "occurred_at": entry.occurred_at,
        "recorded_at": entry.recorded_at,
        "prev_hash": entry.prev_hash,
        "hash": entry.hash,
        "data": entry.data,
    }


ENTRY_TYPES: dict[str, type] = {
    "event_id": str,
    "job_id": str,
    "seq": int,
    "type": str,
    "attempt": int,
    "occurred_at": datetime,
    "recorded_at": datetime,
    "prev_hash": str,
    "hash": str,
    "data": str,
}
"""Every field a stored entry has, and its type: a document with other keys is not one of ours."""
_KINDS = {str: "a string", int: "an integer", datetime: "an instant as the log writes it"}


def raw_entry(fields: Mapping[str, Any], *, occurred_at_unit: timedelta) -> StoredEvent:
    """A stored entry from its raw document or row, every field checked: stores that type
    nothing (a MongoDB document, a SQLite column) can hold anything there. A flawed entry keeps
    what it can and carries its flaw, so verify names it; reads that decode ignore the flaw."""
    flaw = _flaw(fields)
    if flaw is None:
        return StoredEvent(**fields, occurred_at_unit=occurred_at_unit)
    return StoredEvent(
        job_id=_text(fields, "job_id"),
        seq=_whole(fields, "seq"),
        event_id=_text(fields, "event_id"),
        recorded_at=_instant(fields, "recorded_at"),
        prev_hash=_text(fields, "prev_hash"),
        hash=_text(fields, "hash"),
        data=_text(fields, "data"),
        type=_text(fields, "type"),
        attempt=_whole(fields, "attempt"),
        occurred_at=_instant(fields, "occurred_at"),
        occurred_at_unit=occurred_at_unit,
        flaw=flaw,
    )


def _flaw(fields: Mapping[str, Any]) -> str | None:
    """A field missing, of the wrong type, or a key the log never writes; None if none."""
    for name, kind in ENTRY_TYPES.items():
        value = fields.get(name, _MISSING)
        if value.__class__ is kind:  # the common case, decided without isinstance
            continue
        if value is _MISSING:
            return f"stored {name} is missing"
        if not isinstance(value, kind) or isinstance(value, bool):
            return f"stored {name} {value!r} is not {_KINDS[kind]}"
    if len(fields) != len(ENTRY_TYPES):
        extra = sorted(str(key) for key in fields if key not in ENTRY_TYPES)
        return f"stored entry has fields the log never writes: {', '.join(extra)}"
    return None


_MISSING = object()


def _text(fields: Mapping[str, Any], name: str) -> str:
    value = fields.get(name)
    return value if isinstance(value, str) else repr(value)


def _whole(fields: Mapping[str, Any], name: str) -> int:
    value = fields.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _instant(fields: Mapping[str, Any], name: str) -> datetime:
    value = fields.get(name)
    return value if isinstance(value, datetime) else datetime.min.replace(tzinfo=UTC)


def chain_entry(
    event: JobEvent, recorded_at: datetime, last_seq: int = 0, last_hash: str = GENESIS_HASH
) -> StoredEvent:
    """The entry that follows a job's tip (``last_seq`` 0 for a new job) in its hash chain."""
    seq = last_seq + 1
    data = canonical_json(event)
    return StoredEvent(
        job_id=event.job_id,
        seq=seq,
        event_id=str(event.event_id),
        recorded_at=recorded_at,
        prev_hash=last_hash,
        hash=link_hash(event.job_id, seq, recorded_at, last_hash, data),
        data=data,
        type=event.type,
        attempt=event.attempt,
        occurred_at=event.occurred_at.astimezone(UTC),
    )


def decode_entry(entry: StoredEvent) -> RecordedEvent:
    """Decode a stored entry's canonical JSON back into its event."""
    return RecordedEvent(
        seq=entry.seq,
        recorded_at=entry.recorded_at,
        prev_hash=entry.prev_hash,
        hash=entry.hash,
        event=parse_event(entry.data),
    )


DECODED_ENTRIES = 10_000
"""Entries a log adapter keeps decoded for ``read_jobs`` (about 25 MB)."""


class DecodedEntries:
    """The last ``size`` entries ``read_jobs`` decoded, keyed by the whole stored entry.

    A tracker reads the histories of the jobs it settles again at every batch and timer lap,
    and decoding (pydantic validating the canonical JSON) is most of that read: ~60 us an
    entry on this project's machine against ~3 for a hit. The key is every field of the
    entry, ``data`` included, so a hit is exactly what decoding it again would give (events
    are immutable); an entry changed in the store is a miss and is decoded afresh.
    """

    def __init__(self, size: int = DECODED_ENTRIES) -> None:
        self._size = size
        self._entries: dict[StoredEvent, RecordedEvent] = {}

    def decode(self, entry: StoredEvent) -> RecordedEvent:
        found = self._entries.pop(entry, None)
        if found is None:
            found = decode_entry(entry)
            if len(self._entries) >= self._size:
                del self._entries[next(iter(self._entries))]  # the least recently used
        self._entries[entry] = found  # (re)inserted last: the most recently used
        return found

    def __len__(self) -> int:
        return len(self._entries)


def appended(entry: StoredEvent) -> AppendOutcome:
    return AppendOutcome(entry.event_id, entry.job_id, AppendStatus.APPENDED, entry.seq)


def duplicate(event_id: str, job_id: str, seq: int) -> AppendOutcome:
    return AppendOutcome(event_id, job_id, AppendStatus.DUPLICATE, seq)


async def conflict_pause(attempt: int) -> None:
    """A short random sleep after a lost race, growing with ``attempt``, so writers spread out."""
    await asyncio.sleep(full_jitter(CONFLICT_BACKOFF.nth(attempt)))


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
        return appended(entry)

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

"""The chain rules every EventLog adapter shares (MongoDB, SQL and the in-memory fake).

How an event becomes the next entry of its job's hash chain, how a stored document or row is
read back and checked field by field, the cache of decoded entries, and the pause after a lost
append race.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
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


def appended(entry: StoredEvent, event: JobEvent) -> AppendOutcome:
    """The outcome of storing ``entry``, the chain entry of ``event``."""
    recorded = RecordedEvent(entry.seq, entry.recorded_at, entry.prev_hash, entry.hash, event)
    return AppendOutcome(entry.event_id, entry.job_id, AppendStatus.APPENDED, entry.seq, recorded)


def duplicate(event_id: str, job_id: str, seq: int) -> AppendOutcome:
    return AppendOutcome(event_id, job_id, AppendStatus.DUPLICATE, seq)


async def conflict_pause(attempt: int) -> None:
    """A short random sleep after a lost race, growing with ``attempt``, so writers spread out."""
    await asyncio.sleep(full_jitter(CONFLICT_BACKOFF.nth(attempt)))


def plan_appends(
    events: Sequence[JobEvent],
    at: datetime,
    known: dict[str, tuple[str, int]],
    tips: dict[str, tuple[int, str]],
) -> tuple[list[AppendOutcome], list[dict[str, Any]]]:
    """Outcomes in order and the rows to insert, chaining events of one job within the batch."""
    outcomes: list[AppendOutcome] = []
    rows: list[dict[str, Any]] = []
    for job_event in events:
        event_id = str(job_event.event_id)
        if event_id in known:
            outcomes.append(duplicate(event_id, *known[event_id]))
            continue
        entry = chain_entry(job_event, at, *tips.get(job_event.job_id, (0, GENESIS_HASH)))
        tips[job_event.job_id] = (entry.seq, entry.hash)
        known[event_id] = (entry.job_id, entry.seq)
        outcomes.append(appended(entry, job_event))
        rows.append(entry_fields(entry))
    return outcomes, rows

"""The per-job hash chain that makes the log tamper-evident, and its pure verification."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pydantic import ValidationError

from app.domain.events import JobEvent, as_utc, parse_event

GENESIS_HASH = "0" * 64
MICROSECOND = timedelta(microseconds=1)
MILLISECOND = timedelta(milliseconds=1)


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One log entry exactly as stored: ``data`` is the event's canonical JSON text.

    The hash covers job_id, seq, recorded_at, prev_hash and data; ``type``, ``attempt`` and
    ``occurred_at`` are query fields kept beside it (filters and indexes read them), which
    ``verify_chain`` holds to what ``data`` says. ``occurred_at_unit`` is the store's precision
    for that field (a BSON date keeps milliseconds). ``flaw`` is what the store found wrong with
    the raw entry before any of this (a field missing, of the wrong type, or a key the log never
    writes); an entry with a flaw never verifies.
    """

    job_id: str
    seq: int
    event_id: str
    recorded_at: datetime
    prev_hash: str
    hash: str
    data: str
    type: str
    attempt: int
    occurred_at: datetime
    occurred_at_unit: timedelta = MICROSECOND
    flaw: str | None = None


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    """A stored entry together with its decoded event."""

    seq: int
    recorded_at: datetime
    prev_hash: str
    hash: str
    event: JobEvent

    @property
    def job_id(self) -> str:
        return self.event.job_id


def link_hash(job_id: str, seq: int, recorded_at: datetime, prev_hash: str, data: str) -> str:
    """SHA-256 over an unambiguous encoding of everything an entry asserts."""
    material = json.dumps(
        [job_id, seq, as_utc(recorded_at), prev_hash, data],
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(material.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class ChainBreak:
    job_id: str
    seq: int
    reason: str


def verify_chain(job_id: str, entries: Iterable[StoredEvent]) -> ChainBreak | None:
    """The first broken link of one job's entries (in stored seq order), or None if intact.

    Detects altered entries (hash mismatch), removed or inserted ones (seq gaps or repeats, and
    prev_hash mismatches) and reordering (seq out of order).
    """
    expected_seq, prev = 1, GENESIS_HASH
    for entry in entries:
        reason = _link_problem(job_id, entry, expected_seq, prev)
        if reason is not None:
            return ChainBreak(job_id, entry.seq, reason)
        expected_seq, prev = entry.seq + 1, entry.hash
    return None


def _link_problem(job_id: str, entry: StoredEvent, expected_seq: int, prev: str) -> str | None:
    if entry.flaw is not None:
        return entry.flaw
    if entry.job_id != job_id:
        return f"entry belongs to job {entry.job_id!r}"
    if entry.seq != expected_seq:
        return f"seq {entry.seq} where {expected_seq} was expected"
    if entry.prev_hash != prev:
        return "prev_hash does not match the previous entry's hash"
    if (
        link_hash(entry.job_id, entry.seq, entry.recorded_at, entry.prev_hash, entry.data)
        != entry.hash
    ):
        return "hash does not match the entry's content"
    try:
        event = parse_event(entry.data)
    except ValidationError:
        return "stored data is not a valid event"
    if event.job_id != job_id or str(event.event_id) != entry.event_id:
        return "stored data names another job or event id"
    return _query_field_problem(entry, event)


def _query_field_problem(entry: StoredEvent, event: JobEvent) -> str | None:
    """The first query field stored beside the hashed data that says otherwise than the data."""
    if entry.type != event.type:
        return f"stored type {entry.type!r} is not the event's type {event.type!r}"
    if type(entry.attempt) is not int or entry.attempt != event.attempt:
        return f"stored attempt {entry.attempt!r} is not the event's attempt {event.attempt}"
    expected = at_unit(event.occurred_at, entry.occurred_at_unit)
    if not isinstance(entry.occurred_at, datetime) or entry.occurred_at != expected:
        return (
            f"stored occurred_at {_instant(entry.occurred_at)} is not the event's "
            f"occurred_at {_instant(expected)}"
        )
    return None


def at_unit(moment: datetime, unit: timedelta) -> datetime:
    """``moment`` in UTC, cut down to a whole ``unit`` (a divisor of one second), as stored."""
    utc = moment.astimezone(UTC)
    step = unit // MICROSECOND
    return utc.replace(microsecond=utc.microsecond - utc.microsecond % step)


def _instant(value: object) -> str:
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(UTC).isoformat()
    return repr(value)

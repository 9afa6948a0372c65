"""The per-job hash chain that makes the log tamper-evident, and its pure verification."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from pydantic import ValidationError

from app.domain.events import JobEvent, as_utc, parse_event

GENESIS_HASH = "0" * 64


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One log entry exactly as stored: ``data`` is the event's canonical JSON text."""

    job_id: str
    seq: int
    event_id: str
    recorded_at: datetime
    prev_hash: str
    hash: str
    data: str


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
    return None

"""The fleet as of an instant: every job of the log folded, counted by group and status.

A log-wide read, so it is built to share an event loop with ingestion: it pages through the log
by job (``fleet_page`` resumes after a job id, through the (job_id, seq) index), stops once a
page has scanned its bound of entries, and hands the loop back every ``YIELD_EVERY`` entries.
The API serves it one bounded page per request (a cursor continues); the CLI reads every page.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from pydantic import ValidationError

from app.domain.chain import RecordedEvent, StoredEvent
from app.domain.events import JOB_ID_PATTERN, parse_event
from app.domain.policy import Policy
from app.ports import EventLog
from app.services.projection import job_row
from app.services.queries import MAX_CURSOR_LENGTH, InvalidCursor
from app.services.tracking import fold_history


class CorruptEntry(ValueError):
    """A stored entry does not decode: the log was altered (``verify`` names where)."""


class FleetKey(StrEnum):
    """What a fleet snapshot is grouped by."""

    POOL = "pool"
    TENANT = "tenant"
    MODEL = "model"


FLEET_PAGE_EVENTS = 50_000
"""Default bound on the log entries one ``/fleet`` request scans (JOBTRAIL_FLEET_PAGE_EVENTS)."""
YIELD_EVERY = 64
"""Entries decoded and folded between two hand-backs to the event loop (a few ms of CPU): each
await of the tracker's ingestion (an append, a commit, an ack) waits behind one such slice."""


@dataclass(frozen=True, slots=True)
class FleetGroup:
    """Jobs sharing a group value and a status at the snapshot's instant."""

    key: str | None
    status: str | None
    count: int
    job_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class FleetPage:
    """The groups of the jobs after ``after`` up to ``last_job``, and how much was scanned.

    ``last_job`` is None when the scan reached the end of the log (the answer is complete);
    otherwise the next page starts after it. Pages partition the jobs, so summing the counts of
    every page gives the whole fleet.
    """

    groups: list[FleetGroup]
    jobs: int
    events: int
    last_job: str | None


@dataclass
class _Tally:
    count: int = 0
    job_ids: list[str] = field(default_factory=list)


@dataclass
class _Scanned:
    """What a bounded scan has read so far, and where it stopped."""

    budget: int | None
    jobs: int = 0
    events: int = 0
    last_job: str | None = None
    ended: bool = False

    @property
    def full(self) -> bool:
        return self.budget is not None and self.events >= self.budget


async def fleet_as_of(
    log: EventLog,
    policy: Policy,
    at: datetime,
    *,
    status: str | None = None,
    by: FleetKey | None = None,
    with_ids: bool = False,
) -> list[FleetGroup]:
    """Jobs by (group, status) as of ``at``, from one (job_id, seq) scan of the whole log."""
    page = await fleet_page(log, policy, at, status=status, by=by, with_ids=with_ids)
    return page.groups


async def fleet_page(
    log: EventLog,
    policy: Policy,
    at: datetime,
    *,
    status: str | None = None,
    by: FleetKey | None = None,
    with_ids: bool = False,
    after: str | None = None,
    max_events: int | None = None,
) -> FleetPage:
    """Jobs after ``after`` by (group, status) as of ``at``, scanning about ``max_events`` entries.

    The scan stops at the first job boundary once ``max_events`` entries were read (None: the
    whole log), so a page may exceed it by one job's history. One job is in memory at a time, and
    the event loop gets a turn every ``YIELD_EVERY`` entries: a tracker serving this request
    keeps acknowledging deliveries and renewing its membership meanwhile.
    """
    tallies: dict[tuple[str | None, str | None], _Tally] = {}
    scanned = _Scanned(max_events)
    async for events in _histories_until(log.scan_raw(after), at, scanned):
        row = job_row(fold_history(events, policy), policy)
        if status is not None and row.status != status:
            continue
        tally = tallies.setdefault(
            (None if by is None else getattr(row, by.value), row.status), _Tally()
        )
        tally.count += 1
        if with_ids:
            tally.job_ids.append(row.job_id)
    groups = [
        FleetGroup(key, state, t.count, tuple(t.job_ids))
        for (key, state), t in sorted(tallies.items(), key=lambda item: _sort_key(item[0]))
    ]
    last = None if scanned.ended else scanned.last_job
    return FleetPage(groups, scanned.jobs, scanned.events, last)


def _sort_key(group: tuple[str | None, str | None]) -> tuple[str, str]:
    return (group[0] or "", group[1] or "")


async def _histories_until(
    entries: AsyncIterator[StoredEvent], at: datetime, scanned: _Scanned
) -> AsyncIterator[list[RecordedEvent]]:
    """Each job's decoded events recorded at or before ``at``, from a (job_id, seq)-ordered scan.

    Jobs with no entry by ``at`` are skipped. Stops after the job during which ``scanned`` became
    full; ``scanned.ended`` tells whether the log was read to its end.
    """
    current: list[RecordedEvent] = []
    async for entry in entries:
        if entry.job_id != scanned.last_job:
            if current:
                yield current
            if scanned.full:
                return
            current, scanned.last_job = [], entry.job_id
            scanned.jobs += 1
        scanned.events += 1
        if scanned.events % YIELD_EVERY == 0:
            await asyncio.sleep(0)  # decoding and folding is CPU: let acks and heartbeats run
        if entry.recorded_at <= at:
            current.append(_decoded(entry))
    if current:
        yield current
    scanned.ended = True


def _decoded(entry: StoredEvent) -> RecordedEvent:
    try:
        event = parse_event(entry.data)
    except ValidationError:
        raise CorruptEntry(
            f"entry {entry.job_id} seq {entry.seq} is not a valid event: the log was altered "
            "(run jobtrail verify)"
        ) from None
    return RecordedEvent(entry.seq, entry.recorded_at, entry.prev_hash, entry.hash, event)


def _question(at: datetime, status: str | None, by: FleetKey | None, with_ids: bool) -> str:
    """What a fleet query asks, so a cursor is only taken back by the same question."""
    return f"{at.isoformat()}|{status or ''}|{by or ''}|{int(with_ids)}"


def encode_fleet_cursor(
    last_job: str, at: datetime, status: str | None, by: FleetKey | None, with_ids: bool
) -> str:
    """An opaque cursor for the page after ``last_job`` of this very query."""
    text = json.dumps([last_job, _question(at, status, by, with_ids)])
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_fleet_cursor(
    cursor: str, at: datetime, status: str | None, by: FleetKey | None, with_ids: bool
) -> str:
    """The job a cursor resumes after; ``InvalidCursor`` if it is not one handed out for the
    same ``at``, ``status``, ``by`` and ``ids`` (a page of another query would not add up)."""
    if not 1 <= len(cursor) <= MAX_CURSOR_LENGTH:
        raise InvalidCursor("cursor has an invalid length")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        last_job, question = json.loads(raw)
    except (binascii.Error, UnicodeDecodeError, ValueError, TypeError) as exc:
        raise InvalidCursor("cursor is not one this API handed out") from exc
    if not isinstance(last_job, str) or not re.fullmatch(JOB_ID_PATTERN, last_job):
        raise InvalidCursor("cursor is not one this API handed out")
    if question != _question(at, status, by, with_ids):
        raise InvalidCursor("cursor belongs to another fleet query (same at, status, by, ids)")
    return last_job

"""The read side for the Cloud: filtered job lists with keyset cursors, stats and as-of state.

Pure of drivers: the ``JobQueries`` port (app/ports/queries.py, with the filters it takes) is
implemented by the SQL adapter (and a scanning fake for tests); the use cases here encode
cursors and shape the answers.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from app.domain.events import JOB_ID_PATTERN
from app.domain.policy import Policy
from app.ports import EventLog, JobRow
from app.ports.queries import (
    EndedCount,
    InvalidQuery,
    JobFilter,
    JobQueries,
    PageKey,
    as_utc,
    parse_instant,
)
from app.services.projection import job_row
from app.services.tracking import fold_history

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 500
MAX_CURSOR_LENGTH = 600
DEFAULT_STATS_MINUTES = 15
MAX_STATS_MINUTES = 24 * 60
OUTCOME_KINDS = ("completed", "failed", "expired", "dead_lettered")
"""How an attempt can end (``attempts.outcome`` before its ``:reason`` suffix)."""
NO_STATUS = "unknown"
"""The status key counting jobs whose submission was never seen."""


class InvalidCursor(InvalidQuery):
    """A page cursor that this service did not hand out (or that was altered)."""


def encode_cursor(key: PageKey) -> str:
    """An opaque, URL-safe cursor for the page after ``key``."""
    text = json.dumps([key.updated_at.astimezone(UTC).isoformat(), key.job_id])
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> PageKey:
    """The key a cursor stands for; raises ``InvalidCursor`` for anything else."""
    if not 1 <= len(cursor) <= MAX_CURSOR_LENGTH:
        raise InvalidCursor("cursor has an invalid length")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        updated, job_id = json.loads(raw)
        if not isinstance(updated, str) or not isinstance(job_id, str):
            raise TypeError("a cursor holds two strings")
        at = parse_instant(updated)  # ValueError (a ValidationError) for a forged instant
    except (binascii.Error, UnicodeDecodeError, ValueError, TypeError) as exc:
        raise InvalidCursor("cursor is not one this API handed out") from exc
    if not re.fullmatch(JOB_ID_PATTERN, job_id):
        raise InvalidCursor("cursor is not one this API handed out")
    return PageKey(at, job_id)


@dataclass(frozen=True, slots=True)
class JobPage:
    """One page of a job list and the cursor of the next one (None on the last page)."""

    items: list[JobRow]
    next_cursor: str | None


async def list_jobs(
    queries: JobQueries,
    filters: JobFilter,
    *,
    limit: int = DEFAULT_PAGE_SIZE,
    cursor: str | None = None,
) -> JobPage:
    """One page of matching jobs, newest change first; raises ValueError for a bad limit/cursor."""
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise InvalidQuery(f"limit must be between 1 and {MAX_PAGE_SIZE}")
    after = decode_cursor(cursor) if cursor is not None else None
    rows = await queries.list_jobs(filters, limit=limit + 1, after=after)
    items = rows[:limit]
    if len(rows) <= limit:
        return JobPage(items, None)
    last = items[-1]
    assert last.updated_at is not None
    return JobPage(items, encode_cursor(PageKey(last.updated_at, last.job_id)))


async def job_as_of(log: EventLog, policy: Policy, job_id: str, as_of: datetime) -> JobRow | None:
    """The job's row folded from its events recorded at or before ``as_of`` (None if none)."""
    events = await log.read_job(job_id, until=as_utc(as_of))
    if not events:
        return None
    return job_row(fold_history(events, policy), policy)


@dataclass(frozen=True, slots=True)
class MinuteCounts:
    """Attempts ended during one minute, by outcome kind."""

    minute: datetime
    counts: dict[str, int]


@dataclass(frozen=True, slots=True)
class Stats:
    """Job counts now, and attempt throughput over the last ``minutes`` minutes."""

    total: int
    by_status: dict[str, int]
    by_queue: dict[str | None, dict[str, int]]
    minutes: int
    since: datetime
    until: datetime
    ended: dict[str, int]
    per_minute: list[MinuteCounts]

    @property
    def completed_per_minute(self) -> float:
        return self.ended["completed"] / self.minutes

    @property
    def failure_rate(self) -> float | None:
        """Share of ended attempts that did not complete (None when none ended)."""
        total = sum(self.ended.values())
        return None if total == 0 else (total - self.ended["completed"]) / total


def outcome_kind(outcome: str) -> str:
    """``expired:lease`` → ``expired``; an unknown outcome counts as ``failed``."""
    kind = outcome.split(":", 1)[0]
    return kind if kind in OUTCOME_KINDS else "failed"


async def job_stats(queries: JobQueries, now: datetime, minutes: int) -> Stats:
    """Counts by status and queue, and attempts ended per minute over the last ``minutes``."""
    if not 1 <= minutes <= MAX_STATS_MINUTES:
        raise InvalidQuery(f"minutes must be between 1 and {MAX_STATS_MINUTES}")
    groups = await queries.count_jobs()
    until = as_utc(now).replace(second=0, microsecond=0) + timedelta(minutes=1)
    since = until - timedelta(minutes=minutes)
    ended = await queries.attempts_ended(since, until)
    by_status: dict[str, int] = {}
    by_queue: dict[str | None, dict[str, int]] = {}
    for group in groups:
        status = group.status or NO_STATUS
        by_status[status] = by_status.get(status, 0) + group.count
        counts = by_queue.setdefault(group.queue, {})
        counts[status] = counts.get(status, 0) + group.count
    per_minute = _per_minute(ended, since, minutes)
    totals = {kind: sum(m.counts[kind] for m in per_minute) for kind in OUTCOME_KINDS}
    total = sum(by_status.values())
    return Stats(total, by_status, by_queue, minutes, since, until, totals, per_minute)


def _per_minute(ended: Sequence[EndedCount], since: datetime, minutes: int) -> list[MinuteCounts]:
    buckets = [
        MinuteCounts(since + timedelta(minutes=i), dict.fromkeys(OUTCOME_KINDS, 0))
        for i in range(minutes)
    ]
    for row in ended:
        index = int((as_utc(row.minute) - since) // timedelta(minutes=1))
        if 0 <= index < minutes:
            counts = buckets[index].counts
            counts[outcome_kind(row.outcome)] += row.count
    return buckets

"""The read side for the Cloud: filtered job lists with keyset cursors, stats and as-of state.

Pure of drivers: the ``JobQueries`` port is implemented by the SQL adapter (and a scanning fake
for tests); the use cases here validate filters, encode cursors and shape the answers. Filter
values are plain data all the way down: adapters bind them as parameters, never as query text.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Protocol

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    model_validator,
)

from app.domain.events import JOB_ID_PATTERN, JobType, Priority
from app.domain.policy import Policy
from app.domain.state import JobStatus
from app.ports import EventLog, JobRow
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


class InvalidQuery(ValueError):
    """A query parameter that cannot be answered (the API's 422, the CLI's usage error)."""


class InvalidCursor(InvalidQuery):
    """A page cursor that this service did not hand out (or that was altered)."""


def _utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError as exc:
        raise ValueError("instant is out of range once converted to UTC") from exc


_ISO_INSTANT = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}")


def _iso_text(value: object) -> object:
    # Pydantic would also read "0" or "1e9" as Unix timestamps: accept ISO-8601 text only.
    if isinstance(value, str) and not _ISO_INSTANT.match(value):
        raise ValueError("expected an ISO-8601 instant with an offset, e.g. 2026-11-27T14:02:00Z")
    return value


Instant = Annotated[AwareDatetime, BeforeValidator(_iso_text), AfterValidator(_utc)]
"""A timezone-aware ISO-8601 instant, normalised to UTC (naive, numeric or out-of-range values
are refused). Every instant the API or the CLI takes (filters, ``as_of``, ``at``, ``since``, page
cursors) is read by this one type, so they all refuse the same things, such as
``0001-01-01T00:00+05:00`` (no UTC form)."""
_INSTANT: TypeAdapter[datetime] = TypeAdapter(Instant)


def parse_instant(text: str) -> datetime:
    """``text`` as an ``Instant`` in UTC; raises ValueError for anything ``Instant`` refuses."""
    return _INSTANT.validate_python(text)


# Stored names never hold NUL (PostgreSQL cannot store it), so refusing it loses no match.
FilterText = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00]+$")]


class JobFilter(BaseModel):
    """Which jobs to list: every field is optional and they combine with AND."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    status: JobStatus | None = Field(default=None, description="Current status.")
    queue: FilterText | None = Field(default=None, description="Current work queue.")
    pool: FilterText | None = Field(default=None, description="Current pool.")
    tenant: FilterText | None = Field(default=None, description="Tenant of the job.")
    model: FilterText | None = Field(default=None, description="Model the job runs.")
    priority: Priority | None = Field(default=None, description="Priority class.")
    job_type: JobType | None = Field(default=None, description="Job type.")
    updated_since: Instant | None = Field(
        default=None, description="Last change at or after this instant (ISO-8601 with offset)."
    )
    updated_until: Instant | None = Field(
        default=None, description="Last change strictly before this instant (ISO-8601 with offset)."
    )
    error_code: FilterText | None = Field(default=None, description="Last error code.")
    node_id: FilterText | None = Field(default=None, description="Node of the current attempt.")

    @model_validator(mode="after")
    def _range_is_ordered(self) -> JobFilter:
        since, until = self.updated_since, self.updated_until
        if since is not None and until is not None and since >= until:
            raise ValueError("updated_since must be before updated_until")
        return self

    def equalities(self) -> dict[str, str]:
        """The exact-match filters that are set, by JobRow field name, as plain strings."""
        values = {
            "status": self.status,
            "queue": self.queue,
            "pool": self.pool,
            "tenant": self.tenant,
            "model": self.model,
            "priority": self.priority,
            "job_type": self.job_type,
            "last_error_code": self.error_code,
            "node_id": self.node_id,
        }
        return {name: str(value) for name, value in values.items() if value is not None}


@dataclass(frozen=True, slots=True)
class PageKey:
    """Where a page ends in the (updated_at desc, job_id desc) order."""

    updated_at: datetime
    job_id: str


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


@dataclass(frozen=True, slots=True)
class GroupCount:
    """How many jobs share a (queue, status)."""

    queue: str | None
    status: str | None
    count: int


@dataclass(frozen=True, slots=True)
class EndedCount:
    """How many attempts ended with ``outcome`` during the minute starting at ``minute``."""

    minute: datetime
    outcome: str
    count: int


class JobQueries(Protocol):
    """Read queries over the projections (jobs and attempts tables)."""

    async def list_jobs(
        self, filters: JobFilter, *, limit: int, after: PageKey | None
    ) -> list[JobRow]:
        """Up to ``limit`` matching rows after ``after``, by updated_at desc then job_id desc.

        Rows without ``updated_at`` (never written by the tracker) are not listed.
        """
        ...

    async def count_jobs(self) -> list[GroupCount]:
        """Job counts grouped by (queue, status)."""
        ...

    async def attempts_ended(self, since: datetime, until: datetime) -> list[EndedCount]:
        """Attempts with ``since <= ended_at < until``, counted per minute and outcome."""
        ...

    async def ping(self) -> None:
        """Raise ``StoreUnavailable`` if the store cannot answer a trivial query."""
        ...

    async def close(self) -> None: ...


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
    events = await log.read_job(job_id, until=_utc(as_of))
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
    until = _utc(now).replace(second=0, microsecond=0) + timedelta(minutes=1)
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
        index = int((_utc(row.minute) - since) // timedelta(minutes=1))
        if 0 <= index < minutes:
            counts = buckets[index].counts
            counts[outcome_kind(row.outcome)] += row.count
    return buckets

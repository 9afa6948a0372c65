"""The read-side port: job queries over the projections, and the filters and keys they take.

Filter values are plain data all the way down: adapters bind them as parameters, never as
query text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
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

from app.domain.events import JobType, Priority
from app.domain.state import JobStatus
from app.ports.projection import AttemptRow, JobRow


class InvalidQuery(ValueError):
    """A query parameter that cannot be answered (the API's 422, the CLI's usage error)."""


def as_utc(value: datetime) -> datetime:
    """``value`` in UTC; ValueError when it has no UTC form (out of range once converted)."""
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


Instant = Annotated[AwareDatetime, BeforeValidator(_iso_text), AfterValidator(as_utc)]
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


@dataclass(frozen=True, slots=True)
class LatencyRow:
    """One attempt with what its latencies need of its job (``GET /sla?source=projection``)."""

    job_id: str
    attempt: int
    pool: str | None
    job_type: str | None
    priority: str | None
    tenant: str | None
    submitted_at: datetime | None
    queued_at: datetime | None
    reserved_at: datetime | None
    ended_at: datetime | None
    outcome: str | None

    @classmethod
    def of(cls, job: JobRow, attempt: AttemptRow) -> LatencyRow:
        """An attempt row with what its latencies need of its job row."""
        return cls(
            job_id=job.job_id,
            attempt=attempt.attempt,
            pool=attempt.pool,
            job_type=job.job_type,
            priority=job.priority,
            tenant=job.tenant,
            submitted_at=job.submitted_at,
            queued_at=attempt.queued_at,
            reserved_at=attempt.reserved_at,
            ended_at=attempt.ended_at,
            outcome=attempt.outcome,
        )


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

    async def latency_rows(self, since: datetime, until: datetime) -> list[LatencyRow]:
        """Attempts reserved or ended in ``[since, until)``, with their job's kind and tenant."""
        ...

    async def ping(self) -> None:
        """Raise ``StoreUnavailable`` if the store cannot answer a trivial query."""
        ...

    async def close(self) -> None: ...

"""What the API answers with 200, declared for its OpenAPI document, and the query of the job
lists that ``GET /jobs`` and the dashboard's job search share.

The handlers build their JSON themselves (``JSONResponse``, ``row_json``); these models say what
that JSON is, and the schemathesis run in the tests checks every answer against them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from app.domain.state import JobStatus
from app.entrypoints.api_sla import DashboardLatencyOut
from app.ports import JobFilter
from app.services.queries import DEFAULT_PAGE_SIZE, MAX_CURSOR_LENGTH, MAX_PAGE_SIZE


class JobsQuery(JobFilter):
    """The filters of ``GET /jobs`` plus its page size and cursor."""

    limit: int = Field(default=DEFAULT_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE)
    cursor: str | None = Field(
        default=None, min_length=1, max_length=MAX_CURSOR_LENGTH, description="next_cursor"
    )


class HistoryEntryOut(BaseModel):
    """One recorded event: the log's fields, then the event's own (they depend on ``type``)."""

    model_config = ConfigDict(extra="allow")

    seq: int = Field(ge=1)
    recorded_at: AwareDatetime
    hash: str
    prev_hash: str
    version: int
    event_id: str
    job_id: str
    type: str
    occurred_at: AwareDatetime
    attempt: int
    source: str
    actor: str | None


class QueueCountOut(BaseModel):
    queue: str | None
    total: int
    by_status: dict[str, int]


class JobCountsOut(BaseModel):
    total: int
    by_status: dict[str, int]
    by_queue: list[QueueCountOut]


class MinuteOut(BaseModel):
    minute: AwareDatetime
    completed: int
    failed: int
    expired: int
    dead_lettered: int


class AttemptsOut(BaseModel):
    minutes: int
    since: AwareDatetime
    until: AwareDatetime
    ended: dict[str, int]
    completed_per_minute: float
    failure_rate: float | None
    per_minute: list[MinuteOut]


class HealthOut(BaseModel):
    """``/healthz`` (200 and 503) and the ``health`` of ``/stats``."""

    status: Literal["ok", "degraded"]
    reason: str | None = None


class StatsOut(BaseModel):
    jobs: JobCountsOut
    attempts: AttemptsOut
    health: HealthOut


class FleetGroupOut(BaseModel):
    key: str | None
    status: str | None
    count: int
    job_ids: list[str] | None = Field(default=None, description="Only with ids=true.")


class FleetScannedOut(BaseModel):
    jobs: int
    events: int


class FleetOut(BaseModel):
    """One page of the fleet: add up every page's groups until ``next_cursor`` is null."""

    at: AwareDatetime
    status: JobStatus | None
    by: Literal["pool", "tenant", "model"] | None
    groups: list[FleetGroupOut]
    complete: bool
    next_cursor: str | None
    scanned: FleetScannedOut


class VerifyOut(BaseModel):
    """``entries`` when the chain is intact; ``seq`` and ``reason`` of the first break if not."""

    job_id: str
    intact: bool
    entries: int | None = None
    seq: int | None = None
    reason: str | None = None


class CancelOut(BaseModel):
    job_id: str
    event_id: str
    attempt: int
    actor: str


class RedriveOut(BaseModel):
    dry_run: bool
    job_ids: list[str]
    actor: str | None = Field(default=None, description="Absent on a dry run.")


class DeadLetterOut(BaseModel):
    job_id: str
    reason: str | None
    error_code: str | None
    detail: str
    pool: str | None
    queue: str | None
    attempt: int
    updated_at: AwareDatetime | None


class DeadLettersOut(BaseModel):
    items: list[DeadLetterOut]
    more: bool


class AnomalyOut(BaseModel):
    job_id: str
    status: str | None
    anomalies: int
    attempt: int
    pool: str | None
    updated_at: AwareDatetime | None


class AnomaliesOut(BaseModel):
    items: list[AnomalyOut]
    found: int
    scanned: int


class QueueHealthOut(BaseModel):
    """Work-queue depths from RabbitMQ's management API, or why they are not available."""

    model_config = ConfigDict(extra="allow")

    available: bool
    message: str | None
    items: list[dict[str, Any]]


class DashboardDataOut(BaseModel):
    dead_letters: DeadLettersOut
    anomalies: AnomaliesOut
    queues: QueueHealthOut
    latency: DashboardLatencyOut

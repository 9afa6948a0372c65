"""A job's current state: what folding its recorded events yields."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from app.domain.events import JobType, Priority, RetryOverride, RoutingRecord


class JobStatus(StrEnum):
    QUEUED = "queued"
    RESERVED = "reserved"
    COOLING_DOWN = "cooling_down"
    COMPLETED = "completed"
    EXPIRED = "expired"
    DEAD_LETTERED = "dead_lettered"
    CANCELLED = "cancelled"


TERMINAL: frozenset[JobStatus] = frozenset(
    {JobStatus.COMPLETED, JobStatus.EXPIRED, JobStatus.DEAD_LETTERED, JobStatus.CANCELLED}
)


@dataclass(frozen=True, slots=True)
class JobSpec:
    """What the Cloud said about the job when it submitted it (the payload as canonical JSON)."""

    job_type: JobType
    model: str
    priority: Priority
    tenant: str
    pool: str
    queue: str
    payload_json: str
    max_attempts: int | None = None
    ttl_seconds: float | None = None
    lease_seconds: float | None = None
    retry: RetryOverride | None = None
    fallback_pools: tuple[str, ...] = ()
    reroute_after_failures: int | None = None


@dataclass(frozen=True, slots=True)
class Anomaly:
    """A recorded event that made no sense in the state it arrived in; kept, never dropped."""

    seq: int
    event_id: str
    event_type: str
    kind: str
    detail: str


@dataclass(frozen=True, slots=True)
class JobState:
    """The fold of one job's events. ``status`` is None while no submission has been seen."""

    job_id: str
    status: JobStatus | None = None
    attempt: int = 0
    spec: JobSpec | None = None
    pool: str | None = None
    queue: str | None = None
    node_id: str | None = None
    submitted_at: datetime | None = None
    ttl_from: datetime | None = None
    """Where the TTL counts from: the submission, or the last redrive (a fresh chance)."""
    lease_from: datetime | None = None
    lease_seconds: float | None = None
    cooling_since: datetime | None = None
    routing: RoutingRecord | None = None
    """The routing plugin's recorded answer (a ``routed`` event) for the cooldown under way."""
    last_error_code: str | None = None
    last_error_message: str | None = None
    last_failure_retryable: bool | None = None
    failures_on_pool: int = 0
    fallback_index: int = 0
    redrive_base: int = 0
    terminal_reason: str | None = None
    anomalies: tuple[Anomaly, ...] = ()
    last_seq: int = 0
    updated_at: datetime | None = None

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL

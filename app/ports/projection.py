"""The projection store port (SQL in production) and the rows it holds."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol


@dataclass(frozen=True, slots=True)
class JobRow:
    """The projection of one job, as the Cloud reads it."""

    job_id: str
    status: str | None
    attempt: int
    max_attempts: int | None
    job_type: str | None
    model: str | None
    priority: str | None
    tenant: str | None
    pool: str | None
    queue: str | None
    node_id: str | None
    last_error_code: str | None
    last_error_message: str | None
    terminal_reason: str | None
    next_deadline_at: datetime | None
    deadline_kind: str | None
    anomalies: int
    last_seq: int
    submitted_at: datetime | None
    updated_at: datetime | None


@dataclass(frozen=True, slots=True)
class AttemptRow:
    """One attempt of a job: where it ran and how it ended."""

    job_id: str
    attempt: int
    pool: str | None
    queue: str | None
    node_id: str | None
    reserved_at: datetime | None
    ended_at: datetime | None
    outcome: str | None
    error_code: str | None
    queued_at: datetime | None = None
    """When the attempt was queued: its submission, retry, reroute or redrive."""


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """A message to publish once its derived event is recorded; ``event_id`` makes it idempotent."""

    event_id: str
    job_id: str
    exchange: str
    routing_key: str
    body: bytes
    headers: Mapping[str, str | int] = field(default_factory=dict)
    priority: int | None = None
    created_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class TimerRow:
    """The next deadline of a job (lease, ttl or cooldown)."""

    job_id: str
    due_at: datetime
    kind: str


@dataclass(frozen=True, slots=True)
class JobSnapshot:
    """What a tracker folded of a job up to entry ``seq``, whose stored hash was ``hash``
    (``body``: text the tracking service writes and reads, the store keeps it as it is)."""

    seq: int
    hash: str
    body: str


@dataclass(frozen=True, slots=True)
class ProjectionUpdate:
    """Everything one job contributes to one projection transaction.

    ``timer`` None removes the job's timer; ``snapshot`` is stored with the job row (None
    clears it). The update is skipped whole when the stored job row already has a
    ``last_seq`` at least as new as ``job.last_seq``.
    """

    job: JobRow
    attempts: Sequence[AttemptRow] = ()
    outbox: Sequence[OutboxMessage] = ()
    timer: TimerRow | None = None
    snapshot: JobSnapshot | None = None


class ProjectionStore(Protocol):
    """SQL projections: jobs, attempts, outbox, timers and checkpoints."""

    async def apply(
        self, updates: Sequence[ProjectionUpdate], checkpoints: Mapping[str, str] | None = None
    ) -> None:
        """Commit every update (and checkpoint values) in one transaction."""
        ...

    async def get_job(self, job_id: str) -> JobRow | None: ...

    async def get_attempts(self, job_id: str) -> list[AttemptRow]: ...

    async def projected_seqs(self, job_ids: Sequence[str]) -> dict[str, int]:
        """``last_seq`` of each known job among ``job_ids``."""
        ...

    async def snapshots(self, job_ids: Sequence[str]) -> dict[str, JobSnapshot]:
        """The stored snapshot of each job among ``job_ids`` that has one."""
        ...

    def all_jobs(self) -> AsyncIterator[JobRow]:
        """Every job row ordered by job_id, in constant memory."""
        ...

    async def due_timers(self, now: datetime, limit: int) -> list[TimerRow]:
        """Timers with ``due_at <= now``, earliest first."""
        ...

    async def claim_due_timers(self, now: datetime, limit: int, hold: timedelta) -> list[TimerRow]:
        """Due timers, claimed until ``now + hold`` so other trackers skip them meanwhile.

        A projection update of the job releases its claim (the timer row is replaced).
        """
        ...

    async def next_timer_at(self) -> datetime | None:
        """The earliest ``due_at`` of any timer."""
        ...

    async def next_claimable_at(self, now: datetime) -> datetime | None:
        """The earliest moment ``claim_due_timers`` can claim a timer: its ``due_at``, or the
        end of its claim if that is later; None when there are no timers.

        Claims are counted on timers due by ``now`` (a claim is only ever taken on a due timer;
        one due later exists only when trackers' clocks disagree, and is then left out).
        """
        ...

    async def pending_outbox(self, limit: int) -> list[OutboxMessage]:
        """Unpublished outbox messages, oldest first, claimed or not (for inspection only:
        publishers take rows with ``claim_outbox``)."""
        ...

    async def claim_outbox(
        self, owner: str, limit: int, now: datetime, lease: timedelta
    ) -> list[OutboxMessage]:
        """Claim up to ``limit`` unpublished messages for ``owner`` until ``now + lease``,
        oldest first, and return them; trackers claiming at once get disjoint rows.

        A job is claimed whole or not at all: rows of a job that has any unpublished row under
        another owner's live claim are skipped, so one job's messages are only ever in one
        owner's hands and go out in order. Rows taken are the job's oldest (a prefix when
        ``limit`` cuts a job short). An expired claim counts as none; ``owner``'s own live
        claims are renewed.
        """
        ...

    async def release_outbox(self, owner: str, event_ids: Sequence[str]) -> None:
        """End ``owner``'s claims on these messages (rows another owner holds are left be)."""
        ...

    async def mark_published(self, event_ids: Sequence[str], at: datetime) -> None:
        """Stamp the messages published at ``at`` whoever holds them; a published one keeps
        its first stamp and is never claimed again (idempotent)."""
        ...

    async def get_checkpoint(self, name: str) -> str | None: ...

    async def close(self) -> None: ...

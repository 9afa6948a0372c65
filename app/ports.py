"""The ports the services need. Adapters implement them; fakes implement them for tests.

Driver exceptions never cross a port: adapters translate them into the errors below.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Protocol

from app.domain.chain import RecordedEvent, StoredEvent
from app.domain.events import JobEvent
from app.ring_ports import BarrierStore as BarrierStore
from app.ring_ports import Membership as Membership
from app.ring_ports import PartitionConsumers as PartitionConsumers
from app.ring_ports import RingBroker as RingBroker
from app.ring_ports import Unrouted as Unrouted


class StoreUnavailable(Exception):
    """A store (log, SQL) could not be reached or failed transiently; retry later."""


class LogUnavailable(StoreUnavailable):
    """The event log could not be reached or failed transiently."""


class ProjectionUnavailable(StoreUnavailable):
    """The SQL projection store could not be reached or failed transiently."""


class WriteRefused(ValueError):
    """The store refused the data itself (a value it cannot hold, a constraint it enforces).

    Not an outage: writing the same data again fails the same way, so the write is never
    retried as it is. Ingestion isolates the event at fault and quarantines it with this reason.
    """


class PublishFailed(Exception):
    """The broker did not confirm a publish (unroutable, nacked, or disconnected)."""


class AppendStatus(StrEnum):
    APPENDED = "appended"
    DUPLICATE = "duplicate"


@dataclass(frozen=True, slots=True)
class AppendOutcome:
    """What ``append`` did: ``seq`` is the stored entry's seq whether new or a duplicate."""

    event_id: str
    job_id: str
    status: AppendStatus
    seq: int


class Clock(Protocol):
    def now(self) -> datetime:
        """The current instant, timezone-aware UTC."""
        ...


class EventLog(Protocol):
    """Append-only, per-job hash-chained event log. Insert and find only; never update or delete."""

    async def ensure_schema(self) -> None:
        """Create indexes / tables if missing (idempotent)."""
        ...

    async def append(self, event: JobEvent, recorded_at: datetime) -> AppendOutcome:
        """Store ``event`` as the job's next seq; a known event_id is a no-op reporting DUPLICATE.

        ``recorded_at`` is truncated to milliseconds before it is stored and hashed.
        Concurrent appends to one job conflict on (job_id, seq) and are retried inside.
        """
        ...

    async def append_many(
        self, events: Sequence[JobEvent], recorded_at: datetime
    ) -> list[AppendOutcome]:
        """``append`` for each event, in order; per-job order is the order given."""
        ...

    async def read_job(self, job_id: str, *, until: datetime | None = None) -> list[RecordedEvent]:
        """The job's events in seq order (only those recorded at or before ``until`` if given)."""
        ...

    async def read_jobs(self, job_ids: Sequence[str]) -> dict[str, list[RecordedEvent]]:
        """Several jobs' events in seq order, in one round trip; every id is a key (maybe [])."""
        ...

    async def read_jobs_from(self, starts: Mapping[str, int]) -> dict[str, list[RecordedEvent]]:
        """Each job's events from seq ``starts[job_id]`` on (that entry included, so its hash
        can be compared), in seq order, in one round trip; every id is a key (maybe [])."""
        ...

    async def read_job_raw(self, job_id: str) -> list[StoredEvent]:
        """The job's entries as stored, in seq order, without decoding (for verification)."""
        ...

    def scan_raw(self, after_job: str | None = None) -> AsyncIterator[StoredEvent]:
        """Every entry as stored, ordered by (job_id, seq), in constant memory.

        With ``after_job``, only the entries of the jobs ordered after it (a paged reader's
        resumption point, through the (job_id, seq) index).
        """
        ...

    def scan(self) -> AsyncIterator[RecordedEvent]:
        """Every event decoded, ordered by (job_id, seq), in constant memory."""
        ...

    def scan_range(
        self, since: datetime | None, until: datetime | None
    ) -> AsyncIterator[RecordedEvent]:
        """Events recorded in [since, until), ordered by (recorded_at, job_id, seq), paged."""
        ...

    async def count(self) -> int:
        """How many entries the log holds."""
        ...

    async def close(self) -> None: ...


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


class Publisher(Protocol):
    """Publishes to RabbitMQ with publisher confirms; raises PublishFailed when unconfirmed."""

    async def publish(self, message: OutboxMessage) -> None: ...

    async def quarantine(self, body: bytes, reason: str, headers: Mapping[str, str]) -> None: ...

    async def rekey(self, body: bytes, routing_key: str, job_id: str) -> None:
        """Publish an event again with its job-id header (it came without one)."""
        ...

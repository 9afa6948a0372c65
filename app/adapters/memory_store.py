"""The in-memory ProjectionStore: the reference fake, held to the same contract as the SQL one."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import fields, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from app.ports import AttemptRow, JobRow, JobSnapshot, OutboxMessage, ProjectionUpdate, TimerRow

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_Row = TypeVar("_Row", JobRow, AttemptRow, OutboxMessage, TimerRow)

# The columns the SQL schema declares NOT NULL: a None there makes ``apply`` fail whole.
_REQUIRED: dict[type, tuple[str, ...]] = {
    JobRow: ("job_id", "attempt", "anomalies", "last_seq"),
    AttemptRow: ("job_id", "attempt"),
    OutboxMessage: ("event_id", "job_id", "exchange", "routing_key", "body", "headers"),
    TimerRow: ("job_id", "due_at", "kind"),
}


def _utc(row: _Row) -> _Row:
    """The row with every datetime in UTC (a naive one is taken to be UTC), as SQL returns it."""
    changes: dict[str, Any] = {}
    for f in fields(row):
        value = getattr(row, f.name)
        if isinstance(value, datetime):
            aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
            changes[f.name] = aware.astimezone(UTC)
    return replace(row, **changes)


def _require(row: object) -> None:
    for name in _REQUIRED[type(row)]:
        if getattr(row, name) is None:
            raise ValueError(f"{type(row).__name__}.{name} must not be None")


def _check(update: ProjectionUpdate) -> None:
    """Reject what the SQL store rejects, before anything is changed."""
    job_id = update.job.job_id
    rows: list[object] = [update.job, *update.attempts, *update.outbox]
    if update.timer is not None:
        rows.append(update.timer)
    for row in rows:
        _require(row)
    if any(a.job_id != job_id for a in update.attempts):
        raise ValueError(f"job {job_id!r}: an attempt row names another job")
    if update.timer is not None and update.timer.job_id != job_id:
        raise ValueError(f"job {job_id!r}: the timer names another job")


class InMemoryProjectionStore:
    """ProjectionStore in dictionaries; ``apply`` validates the whole batch before changing any."""

    def __init__(self) -> None:
        self._jobs: dict[str, JobRow] = {}
        self._snapshots: dict[str, JobSnapshot] = {}
        self._attempts: dict[str, dict[int, AttemptRow]] = {}
        self._outbox: dict[str, OutboxMessage] = {}
        self._published: dict[str, datetime] = {}
        self._timers: dict[str, TimerRow] = {}
        self._claims: dict[str, datetime] = {}
        self._outbox_claims: dict[str, tuple[str, datetime]] = {}
        """event_id -> (owner, claimed until) of unpublished outbox rows."""
        self._checkpoints: dict[str, str] = {}

    async def apply(
        self, updates: Sequence[ProjectionUpdate], checkpoints: Mapping[str, str] | None = None
    ) -> None:
        """Apply every newer update in order (and the checkpoint values), all or nothing."""
        for item in updates:
            _check(item)
        if any(value is None for value in (checkpoints or {}).values()):
            raise ValueError("a checkpoint value must not be None")
        now = datetime.now(UTC)
        for item in updates:
            self._apply_one(item, now)
        self._checkpoints.update(checkpoints or {})

    def _apply_one(self, update: ProjectionUpdate, now: datetime) -> None:
        job_id = update.job.job_id
        stored = self._jobs.get(job_id)
        if stored is not None and stored.last_seq >= update.job.last_seq:
            return
        self._jobs[job_id] = _utc(update.job)
        if update.snapshot is None:
            self._snapshots.pop(job_id, None)
        else:
            self._snapshots[job_id] = update.snapshot
        job_attempts = self._attempts.setdefault(job_id, {})
        job_attempts.update((a.attempt, _utc(a)) for a in update.attempts)
        for message in update.outbox:
            if message.event_id not in self._outbox:
                created_at = message.created_at or now
                stamped = replace(message, headers=dict(message.headers), created_at=created_at)
                self._outbox[message.event_id] = _utc(stamped)
        self._claims.pop(job_id, None)
        if update.timer is None:
            self._timers.pop(job_id, None)
        else:
            self._timers[job_id] = _utc(update.timer)

    async def get_job(self, job_id: str) -> JobRow | None:
        """The job's row, or None if it was never projected."""
        return self._jobs.get(job_id)

    async def get_attempts(self, job_id: str) -> list[AttemptRow]:
        """The job's attempts ordered by attempt number."""
        return [a for _, a in sorted(self._attempts.get(job_id, {}).items())]

    async def projected_seqs(self, job_ids: Sequence[str]) -> dict[str, int]:
        """``last_seq`` of each known job among ``job_ids``."""
        return {j: self._jobs[j].last_seq for j in job_ids if j in self._jobs}

    async def snapshots(self, job_ids: Sequence[str]) -> dict[str, JobSnapshot]:
        """The stored snapshot of each job among ``job_ids`` that has one."""
        return {j: self._snapshots[j] for j in job_ids if j in self._snapshots}

    async def all_jobs(self) -> AsyncIterator[JobRow]:
        """Every job row ordered by job_id (jobs added meanwhile may or may not appear)."""
        for job_id in sorted(self._jobs):
            yield self._jobs[job_id]

    async def due_timers(self, now: datetime, limit: int) -> list[TimerRow]:
        """Timers with ``due_at <= now``, earliest first (then by job_id)."""
        due = [t for t in self._timers.values() if t.due_at <= now]
        return sorted(due, key=lambda t: (t.due_at, t.job_id))[:limit]

    async def claim_due_timers(self, now: datetime, limit: int, hold: timedelta) -> list[TimerRow]:
        """Claim due timers nobody holds until ``now + hold``."""
        free = [
            t
            for t in await self.due_timers(now, len(self._timers))
            if self._claims.get(t.job_id, now) <= now
        ][:limit]
        for t in free:
            self._claims[t.job_id] = now + hold
        return free

    async def next_timer_at(self) -> datetime | None:
        """The earliest ``due_at`` of any timer."""
        return min((t.due_at for t in self._timers.values()), default=None)

    async def next_claimable_at(self, now: datetime) -> datetime | None:
        """The earliest moment a timer can be claimed (its due time or its claim's end)."""
        moments = [
            max(t.due_at, self._claims.get(t.job_id, t.due_at)) if t.due_at <= now else t.due_at
            for t in self._timers.values()
        ]
        return min(moments, default=None)

    async def pending_outbox(self, limit: int) -> list[OutboxMessage]:
        """Unpublished outbox messages, claimed or not: oldest ``created_at`` first, then by id."""
        pending = [m for m in self._outbox.values() if m.event_id not in self._published]
        return sorted(pending, key=lambda m: (m.created_at or _EPOCH, m.event_id))[:limit]

    async def claim_outbox(
        self, owner: str, limit: int, now: datetime, lease: timedelta
    ) -> list[OutboxMessage]:
        """Claim the oldest unpublished rows of jobs no other owner holds, whole or a prefix."""
        pending = await self.pending_outbox(len(self._outbox))
        held = {m.job_id for m in pending if self._held_by_another(m.event_id, owner, now)}
        taken = [m for m in pending if m.job_id not in held][:limit]
        for message in taken:
            self._outbox_claims[message.event_id] = (owner, now + lease)
        return taken

    def _held_by_another(self, event_id: str, owner: str, now: datetime) -> bool:
        holder, until = self._outbox_claims.get(event_id, (owner, now))
        return holder != owner and until > now

    async def release_outbox(self, owner: str, event_ids: Sequence[str]) -> None:
        """End ``owner``'s claims on these messages; others' claims are left be."""
        for event_id in event_ids:
            if self._outbox_claims.get(event_id, ("",))[0] == owner:
                del self._outbox_claims[event_id]

    async def mark_published(self, event_ids: Sequence[str], at: datetime) -> None:
        """Stamp the messages as published at ``at``; a published one keeps its first stamp."""
        for event_id in event_ids:
            if event_id in self._outbox:
                self._published.setdefault(event_id, at)
                self._outbox_claims.pop(event_id, None)

    async def get_checkpoint(self, name: str) -> str | None:
        """The checkpoint's value, or None if it was never set."""
        return self._checkpoints.get(name)

    async def close(self) -> None:
        """Nothing to release."""


class InMemoryBarrierStore:
    """BarrierStore in dictionaries (one process: tests and the pure core)."""

    def __init__(self) -> None:
        self._barriers: dict[str, datetime | None] = {}
        self._arrivals: dict[str, set[int]] = {}

    async def begin_barrier(self, now: datetime) -> str:
        for epoch, opened in self._barriers.items():  # oldest first: dicts keep insertion order
            if opened is None:
                return epoch
        epoch = uuid.uuid4().hex
        self._barriers[epoch] = None
        return epoch

    async def barrier_arrive(self, epoch: str, partition: int, now: datetime) -> None:
        self._arrivals.setdefault(epoch, set()).add(partition)

    async def barrier_arrivals(self, epoch: str) -> set[int]:
        return set(self._arrivals.get(epoch, ()))

    async def barrier_opened(self, epoch: str) -> bool:
        return epoch not in self._barriers or self._barriers[epoch] is not None

    async def open_barrier(self, epoch: str, now: datetime) -> None:
        if self._barriers.get(epoch) is None:
            self._barriers[epoch] = now

    async def close(self) -> None:
        """Nothing to release."""


class InMemoryMembership:
    """Membership in a dictionary, on a clock of seconds (monotonic by default)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._expires: dict[str, float] = {}

    async def beat(self, member: str, ttl: float) -> list[str]:
        now = self._clock()
        self._expires[member] = now + ttl
        self._expires = {m: t for m, t in self._expires.items() if t >= now}
        return sorted(self._expires)

    async def leave(self, member: str) -> None:
        self._expires.pop(member, None)

    async def close(self) -> None:
        """Nothing to release."""

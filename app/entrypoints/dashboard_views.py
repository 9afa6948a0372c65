"""What the dashboard's job page shows, read from the same services as the API's endpoints.

A job's page joins its projection row (``GET /jobs/{id}``), its recorded history
(``GET /jobs/{id}/history``), the anomalies its fold finds and its chain's verification
(``GET /jobs/{id}/verify``). The attempts table and the timeline's reasons are derived from the
history here, as plain values the template only prints (autoescaped).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from app.bootstrap import Readers
from app.domain.chain import RecordedEvent, verify_chain
from app.domain.events import (
    Cancelled,
    Completed,
    DeadLettered,
    Expired,
    Failed,
    Heartbeat,
    JobEvent,
    Redriven,
    Rerouted,
    Reserved,
    Retried,
    Routed,
    Submitted,
)
from app.domain.machine import evolve
from app.domain.policy import Policy
from app.domain.state import Anomaly, JobState
from app.ports import JobRow
from app.services.projection import attempt_rows

_STARTS = (Submitted, Retried, Rerouted, Redriven)
"""The events that start an attempt (put the job on a queue)."""


@dataclass(frozen=True, slots=True)
class AttemptView:
    """One row of the attempts table; durations are None until both ends are known."""

    attempt: int
    pool: str | None
    node_id: str | None
    wait: timedelta | None
    """From the event that queued the attempt to its reservation."""
    run: timedelta | None
    """From the reservation to the attempt's end."""
    outcome: str | None
    error_code: str | None
    error_message: str | None


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    """One recorded event and, in words, the decision or fact it records."""

    seq: int
    recorded_at: datetime
    occurred_at: datetime
    type: str
    attempt: int
    source: str
    actor: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class ChainCheck:
    """The job's hash chain re-computed: intact, or where and why it breaks."""

    entries: int
    broken_seq: int | None = None
    broken_reason: str | None = None

    @property
    def intact(self) -> bool:
        return self.broken_seq is None


@dataclass(frozen=True, slots=True)
class JobView:
    """Everything the job page shows."""

    row: JobRow
    ended_at: datetime | None
    attempts: list[AttemptView]
    timeline: list[TimelineEntry]
    anomalies: tuple[Anomaly, ...]
    chain: ChainCheck


async def load_job(readers: Readers, job_id: str) -> JobView | None:
    """The job's page, or None when the job has no projection row (unknown to the tracker)."""
    row = await readers.store.get_job(job_id)
    if row is None:
        return None
    events = await readers.log.read_job(job_id)
    entries = await readers.log.read_job_raw(job_id)
    broken = verify_chain(job_id, entries)
    chain = ChainCheck(
        len(entries),
        None if broken is None else broken.seq,
        None if broken is None else broken.reason,
    )
    state, ended = fold_to_end(job_id, events, readers.policy)
    return JobView(row, ended, attempts(job_id, events), timeline(events), state.anomalies, chain)


def fold_to_end(
    job_id: str, events: Sequence[RecordedEvent], policy: Policy
) -> tuple[JobState, datetime | None]:
    """The job's fold (as ``fold_history``) and when it last became terminal, if it is: the
    instant of that event, not of a later report that changed nothing but the anomalies."""
    state, ended = JobState(job_id=job_id), None
    for recorded in events:
        after = evolve(state, recorded, policy.clock_skew_tolerance)
        if after.is_terminal and not state.is_terminal:
            ended = recorded.event.occurred_at
        state = after
    return state, (ended if state.is_terminal else None)


def attempts(job_id: str, events: Sequence[RecordedEvent]) -> list[AttemptView]:
    """The projection's attempt rows, with the wait, run time and error message added.

    Durations are between the events' own instants (``occurred_at``): the queueing decision,
    the node's reservation and the attempt's end as its reporter saw it.
    """
    marks: dict[tuple[int, str], datetime] = {}
    messages: dict[int, str] = {}
    for recorded in events:
        event = recorded.event
        mark = _mark(event)
        if mark is not None:
            marks.setdefault((event.attempt, mark), event.occurred_at)
        if isinstance(event, Failed):
            messages.setdefault(event.attempt, event.error_message)
    return [
        AttemptView(
            attempt=row.attempt,
            pool=row.pool,
            node_id=row.node_id,
            wait=_between(marks.get((row.attempt, "queued")), marks.get((row.attempt, "reserved"))),
            run=_between(marks.get((row.attempt, "reserved")), marks.get((row.attempt, "ended"))),
            outcome=row.outcome,
            error_code=row.error_code,
            error_message=messages.get(row.attempt),
        )
        for row in attempt_rows(job_id, events)
    ]


def _mark(event: JobEvent) -> str | None:
    if isinstance(event, _STARTS):
        return "queued"
    if isinstance(event, Reserved):
        return "reserved"
    if isinstance(event, Completed | Failed | Expired | DeadLettered):
        return "ended"
    return None


def _between(start: datetime | None, end: datetime | None) -> timedelta | None:
    return None if start is None or end is None else end - start


def timeline(events: Sequence[RecordedEvent]) -> list[TimelineEntry]:
    """Every recorded event in seq order, each with its reason in words."""
    entries: list[TimelineEntry] = []
    last_end: datetime | None = None
    for recorded in events:
        event = recorded.event
        entries.append(
            TimelineEntry(
                seq=recorded.seq,
                recorded_at=recorded.recorded_at,
                occurred_at=event.occurred_at,
                type=event.type,
                attempt=event.attempt,
                source=event.source,
                actor=event.actor,
                reason=reason(event, last_end),
            )
        )
        if isinstance(event, Failed | Expired):
            last_end = recorded.recorded_at
    return entries


def reason(event: JobEvent, last_end: datetime | None = None) -> str:
    """Why the event happened or what it decided; ``last_end`` is when the previous attempt's
    end was recorded, which a retry's cooldown counts from (the tracker's clock, as the retry's)."""
    if isinstance(event, Submitted | Reserved | Heartbeat | Completed | Failed):
        return _fact(event)
    return _decision(event, last_end)


def _fact(event: Submitted | Reserved | Heartbeat | Completed | Failed) -> str:
    if isinstance(event, Submitted):
        return (
            f"{event.job_type} job on {event.model}, {event.priority} priority, "
            f"tenant {event.tenant}, pool {event.pool}"
        )
    if isinstance(event, Reserved):
        lease = "" if event.lease_seconds is None else f", lease {event.lease_seconds:g} s"
        return f"reserved by node {event.node_id}{lease}"
    if isinstance(event, Heartbeat):
        return f"heartbeat from node {event.node_id}: lease extended"
    if isinstance(event, Completed):
        took = "" if event.duration_ms is None else f" in {event.duration_ms} ms"
        return f"completed on node {event.node_id}{took}"
    retry = "retryable" if event.retryable else "not retryable"
    message = f": {event.error_message}" if event.error_message else ""
    return f"failed on node {event.node_id} ({retry}) {event.error_code}{message}"


def _decision(event: JobEvent, last_end: datetime | None) -> str:
    if isinstance(event, Expired):
        what = "the lease ran out" if event.reason == "lease" else "the job's TTL ran out"
        return f"{what}{_detail(event.detail)}"
    if isinstance(event, Routed):
        return _routed(event)
    if isinstance(event, Retried):
        cooldown = "" if last_end is None else f" after a cooldown of {_seconds(event, last_end)}"
        return f"retry as attempt {event.attempt} on pool {event.pool}{cooldown}"
    if isinstance(event, Rerouted):
        return f"reroute {event.from_pool} -> {event.pool} for attempt {event.attempt}"
    if isinstance(event, DeadLettered):
        return f"dead-lettered: {event.reason}{_detail(event.detail)}"
    if isinstance(event, Cancelled):
        return f"cancelled by {event.actor}{_detail(event.reason)}"
    if isinstance(event, Redriven):
        return f"redriven by {event.actor} to pool {event.pool}{_detail(event.reason)}"
    return event.type


def _routed(event: Routed) -> str:
    record = event.routing
    plugin = f"routing plugin {record.plugin} {record.version}"
    if record.fallback is not None:
        return f"{plugin} {record.fallback}: the policy's rule decides"
    where = "stay on the pool" if record.pool is None else f"go to pool {record.pool}"
    return f"{plugin}: {where} after a cooldown of {record.cooldown_seconds:.3f} s"


def _detail(text: str) -> str:
    return f" ({text})" if text else ""


def _seconds(event: JobEvent, since: datetime) -> str:
    return f"{(event.occurred_at - since).total_seconds():.3f} s"

"""Turning a job's folded state and history into projection rows, outbox messages and a timer.

Pure: the same state and history always give the same rows, which is what lets ``rebuild``
prove that the projection equals the fold of the log. A tracker projects from a snapshot and
the events after it: the attempts the snapshot carries (``AttemptsSoFar``) stand for the
events before it, and the rows it upserts are those the new events changed, so the stored rows
come out as a projection of the whole history would make them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from datetime import datetime

from app.domain.chain import RecordedEvent
from app.domain.decide import next_deadline
from app.domain.events import (
    Completed,
    DeadLettered,
    Expired,
    Failed,
    Redriven,
    Rerouted,
    Reserved,
    Retried,
    Submitted,
)
from app.domain.policy import Policy
from app.domain.state import JobState
from app.ports import AttemptRow, JobRow, OutboxMessage, ProjectionUpdate, TimerRow

DEAD_LETTER_QUEUE = "jobtrail.dead"
ATTEMPT_HEADER = "x-jobtrail-attempt"
JOB_ID_HEADER = "x-jobtrail-job-id"
EVENT_ID_HEADER = "x-jobtrail-event-id"
REASON_HEADER = "x-jobtrail-reason"


def job_row(state: JobState, policy: Policy) -> JobRow:
    """The Cloud's view of one job."""
    spec = state.spec
    deadline = next_deadline(state, policy)
    return JobRow(
        job_id=state.job_id,
        status=state.status.value if state.status is not None else None,
        attempt=state.attempt,
        max_attempts=policy.for_job(spec).max_attempts if spec is not None else None,
        job_type=spec.job_type.value if spec else None,
        model=spec.model if spec else None,
        priority=spec.priority.value if spec else None,
        tenant=spec.tenant if spec else None,
        pool=state.pool,
        queue=state.queue,
        node_id=state.node_id,
        last_error_code=state.last_error_code,
        last_error_message=state.last_error_message,
        terminal_reason=state.terminal_reason,
        next_deadline_at=deadline.at if deadline else None,
        deadline_kind=deadline.kind if deadline else None,
        anomalies=len(state.anomalies),
        last_seq=state.last_seq,
        submitted_at=state.submitted_at,
        updated_at=state.updated_at,
    )


@dataclass
class _Attempt:
    pool: str | None = None
    queue: str | None = None
    node_id: str | None = None
    reserved_at: datetime | None = None
    ended_at: datetime | None = None
    outcome: str | None = None
    error_code: str | None = None
    queued_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class AttemptsSoFar:
    """The attempts a job's events started up to some seq: those still open (a later event can
    change their row) and the numbers of those that ended (no later event changes them)."""

    open: tuple[AttemptRow, ...] = ()
    ended: tuple[int, ...] = ()


def attempt_rows(job_id: str, events: Sequence[RecordedEvent]) -> list[AttemptRow]:
    """One row per attempt that a submission or republish started."""
    return advance_attempts(job_id, AttemptsSoFar(), events)[0]


def advance_attempts(
    job_id: str, before: AttemptsSoFar, events: Sequence[RecordedEvent]
) -> tuple[list[AttemptRow], AttemptsSoFar]:
    """The rows of the attempts ``events`` (the ones after ``before``) touch, by attempt, and
    the attempts after them. An ended attempt's events change nothing, so they are skipped."""
    ended = set(before.ended)
    attempts = {row.attempt: _open(row) for row in before.open}
    touched: set[int] = set()
    for recorded in events:
        if recorded.event.attempt not in ended:
            touched.add(recorded.event.attempt)
            _fold_attempt(attempts, recorded)
    rows = {n: AttemptRow(job_id, n, **vars(a)) for n, a in attempts.items()}
    after = AttemptsSoFar(
        open=tuple(row for n, row in sorted(rows.items()) if row.outcome is None),
        ended=tuple(sorted(ended | {n for n, row in rows.items() if row.outcome is not None})),
    )
    return [rows[n] for n in sorted(touched & rows.keys())], after


def _open(row: AttemptRow) -> _Attempt:
    return _Attempt(**{f.name: getattr(row, f.name) for f in fields(_Attempt)})


def _fold_attempt(attempts: dict[int, _Attempt], recorded: RecordedEvent) -> None:
    event, at = recorded.event, recorded.recorded_at
    if isinstance(event, Submitted | Retried | Rerouted | Redriven):
        attempts.setdefault(
            event.attempt, _Attempt(pool=event.pool, queue=event.queue, queued_at=at)
        )
        return
    current = attempts.get(event.attempt)
    if current is None or current.outcome is not None:
        return
    if isinstance(event, Reserved):
        current.node_id, current.reserved_at = event.node_id, at
    elif isinstance(event, Completed):
        current.node_id, current.ended_at, current.outcome = event.node_id, at, "completed"
    elif isinstance(event, Failed):
        current.ended_at, current.outcome, current.error_code = at, "failed", event.error_code
    elif isinstance(event, Expired | DeadLettered):
        current.ended_at, current.outcome = at, f"{event.type}:{event.reason}"


def outbox_messages(
    state: JobState, new_events: Sequence[RecordedEvent], policy: Policy
) -> list[OutboxMessage]:
    """Messages owed for newly recorded republish and dead-letter events (publish after commit)."""
    if state.spec is None:
        return []
    payload = json.loads(state.spec.payload_json)
    priority = policy.for_job(state.spec).rabbit_priority
    messages = []
    for recorded in new_events:
        event = recorded.event
        body: dict[str, object] = {
            "job_id": event.job_id,
            "attempt": event.attempt,
            "payload": payload,
        }
        headers: dict[str, str | int] = {
            ATTEMPT_HEADER: event.attempt,
            JOB_ID_HEADER: event.job_id,
            EVENT_ID_HEADER: str(event.event_id),
        }
        if isinstance(event, Retried | Rerouted | Redriven):
            queue = event.queue
        elif isinstance(event, DeadLettered):
            queue = DEAD_LETTER_QUEUE
            body |= {"reason": str(event.reason), "detail": event.detail}
            headers[REASON_HEADER] = str(event.reason)
        else:
            continue
        messages.append(
            OutboxMessage(
                event_id=str(event.event_id),
                job_id=event.job_id,
                exchange="",
                routing_key=queue,
                body=json.dumps(body, separators=(",", ":")).encode(),
                headers=headers,
                priority=priority,
                created_at=recorded.recorded_at,
            )
        )
    return messages


def projection_update(
    state: JobState, events: Sequence[RecordedEvent], projected_seq: int, policy: Policy
) -> ProjectionUpdate:
    """Everything one job contributes to a projection transaction, from its whole history."""
    return settled_update(state, AttemptsSoFar(), events, projected_seq, policy)[0]


def settled_update(
    state: JobState,
    before: AttemptsSoFar,
    events: Sequence[RecordedEvent],
    projected_seq: int,
    policy: Policy,
) -> tuple[ProjectionUpdate, AttemptsSoFar]:
    """The update of a job whose ``events`` came after the attempts ``before`` (all of them, for
    a whole history), and its attempts after them. ``before`` must not be newer than the
    stored rows (``projected_seq``): the update upserts only the attempt rows ``events`` touch."""
    row = job_row(state, policy)
    timer = None
    if row.next_deadline_at is not None and row.deadline_kind is not None:
        timer = TimerRow(state.job_id, row.next_deadline_at, row.deadline_kind)
    new_events = [e for e in events if e.seq > projected_seq]
    attempts, after = advance_attempts(state.job_id, before, events)
    update = ProjectionUpdate(
        job=row,
        attempts=attempts,
        outbox=outbox_messages(state, new_events, policy),
        timer=timer,
    )
    return update, after


def without_outbox(update: ProjectionUpdate) -> ProjectionUpdate:
    """The same update with no messages (a rebuild must not republish history)."""
    return replace(update, outbox=())

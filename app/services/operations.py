"""Operator actions — redrive dead letters, cancel jobs — as events, never as state edits.

An action is an event published to ``jobtrail.events`` like any producer's, so the tracker that
owns the job records it in the log, folds it and (for a redrive) republishes the job through the
outbox. Its id is derived from the job and the attempt it acts on, so pressing the button twice
records one action.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from app.domain.events import Cancelled, DeadLetterReason, JobEvent, Redriven
from app.domain.state import TERMINAL, JobStatus
from app.ports import ActionPublisher, JobFilter, JobQueries, JobRow
from app.services.queries import list_jobs

ACTIONS_NAMESPACE = uuid.UUID("5b7e6f0c-6f0e-4d8a-9d3e-3f1b7a2c9e44")
OPERATOR_SOURCE = "operator"
PAGE = 500


class InvalidAction(ValueError):
    """An action that cannot apply to the job in its current state."""


@dataclass(frozen=True, slots=True)
class RedriveSelection:
    """Which dead-lettered jobs to send back."""

    reason: DeadLetterReason | None = None
    pool: str | None = None
    since: datetime | None = None
    limit: int = 10_000


async def dead_letters(queries: JobQueries, selection: RedriveSelection) -> list[JobRow]:
    """Dead-lettered jobs matching the selection, newest first (through the indexed list query)."""
    filters = JobFilter(
        status=JobStatus.DEAD_LETTERED, pool=selection.pool, updated_since=selection.since
    )
    found: list[JobRow] = []
    cursor: str | None = None
    while len(found) < selection.limit:
        page = await list_jobs(queries, filters, limit=PAGE, cursor=cursor)
        found.extend(r for r in page.items if _reason_matches(r, selection.reason))
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    return found[: selection.limit]


def _reason_matches(row: JobRow, reason: DeadLetterReason | None) -> bool:
    return reason is None or row.terminal_reason == str(reason)


def redrive_event(row: JobRow, actor: str, now: datetime, note: str = "") -> Redriven:
    """The event that sends a dead-lettered job back to its queue as a new attempt."""
    if row.status != JobStatus.DEAD_LETTERED or row.pool is None or row.queue is None:
        raise InvalidAction(f"job {row.job_id} is {row.status}, not dead_lettered")
    attempt = row.attempt + 1
    return Redriven(
        event_id=uuid.uuid5(ACTIONS_NAMESPACE, f"{row.job_id}|redriven|{attempt}"),
        job_id=row.job_id,
        occurred_at=now,
        attempt=attempt,
        source=OPERATOR_SOURCE,
        actor=actor,
        pool=row.pool,
        queue=row.queue,
        reason=note,
    )


def cancel_event(row: JobRow, actor: str, now: datetime, reason: str = "") -> Cancelled:
    """The event that cancels a live job; a cancelled job is never republished."""
    if row.status is None or JobStatus(row.status) in TERMINAL:
        raise InvalidAction(
            f"job {row.job_id} is {row.status or 'not submitted'}: nothing to cancel"
        )
    return Cancelled(
        event_id=uuid.uuid5(ACTIONS_NAMESPACE, f"{row.job_id}|cancelled|{row.attempt}"),
        job_id=row.job_id,
        occurred_at=now,
        attempt=max(row.attempt, 1),
        source=OPERATOR_SOURCE,
        actor=actor,
        reason=reason,
    )


async def publish_all(publisher: ActionPublisher, events: Sequence[JobEvent]) -> int:
    """Publish each action; returns how many were published."""
    for event in events:
        await publisher.publish(event)
    return len(events)

"""The job state machine: ``evolve`` one recorded event into a state, ``fold`` a history.

``evolve`` never raises on recorded history. An event that makes no sense in the current state
(an unknown job, a stale attempt, a report after a terminal state, a duplicate report) changes
nothing but the bookkeeping and is kept as an ``Anomaly`` on the state.

Deadlines (lease, TTL, cooldown) are measured from ``recorded_at`` (Jobtrail's clock), never
from the producer's ``occurred_at``: a skewed producer clock can neither expire a lease early nor
stretch one. A report that waited in a backlog or through an outage starts (or extends) its lease
when Jobtrail records it, so recording it late never yields a lease already run out; under a
steady backlog the tracker sees the whole stream shifted by its lag, every deadline with it. (A
lag that grows between two reports by more than the lease's slack, the lease minus their gap, can
still let the lease run out before the second is recorded, as a report lost on the way would.)

An event recorded long after it occurred is therefore lag, not a fault: only an ``occurred_at``
*ahead* of ``recorded_at`` by more than the policy's tolerance is impossible for a correct clock,
and only that is flagged (``clock_skew``). A producer clock running behind cannot be told from a
backlog, and needs no flag: it changes no deadline.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import replace
from datetime import timedelta
from typing import assert_never

from app.domain.chain import RecordedEvent
from app.domain.events import (
    Cancelled,
    Completed,
    DeadLettered,
    Expired,
    ExpiryReason,
    Failed,
    Heartbeat,
    JobEvent,
    Redriven,
    Rerouted,
    Reserved,
    Retried,
    Routed,
    RoutingRecord,
    Submitted,
)
from app.domain.state import Anomaly, JobSpec, JobState, JobStatus

DEFAULT_SKEW_TOLERANCE = timedelta(minutes=5)
LEASE_EXPIRED_CODE = "lease_expired"


def fold(
    events: Iterable[RecordedEvent],
    state: JobState | None = None,
    skew_tolerance: timedelta = DEFAULT_SKEW_TOLERANCE,
) -> JobState:
    """Fold recorded events (in seq order) onto ``state`` (a fresh state if None)."""
    for recorded in events:
        if state is None:
            state = JobState(job_id=recorded.event.job_id)
        state = evolve(state, recorded, skew_tolerance)
    if state is None:
        raise ValueError("fold of no events needs a starting state")
    return state


def evolve(
    state: JobState, recorded: RecordedEvent, skew_tolerance: timedelta = DEFAULT_SKEW_TOLERANCE
) -> JobState:
    """The state after one more recorded event of the same job."""
    base = replace(state, last_seq=recorded.seq, updated_at=recorded.recorded_at)
    ahead = recorded.event.occurred_at - recorded.recorded_at
    if ahead > skew_tolerance:  # late is lag (a backlog, an outage); only ahead is a bad clock
        base = _flag(base, recorded, "clock_skew", f"occurred_at is {ahead} ahead of recorded_at")
    outcome = _apply(base, recorded)
    if isinstance(outcome, str):
        return _flag(base, recorded, *_anomaly_kind(outcome, state))
    return outcome


def _anomaly_kind(reason: str, state: JobState) -> tuple[str, str]:
    if state.status is None:
        return "unknown_job", f"no submission seen ({reason})"
    if state.is_terminal:
        return "after_terminal", f"job is already {state.status} ({reason})"
    kind, _, detail = reason.partition(": ")
    return (kind, detail) if detail else ("unexpected", reason)


def _flag(state: JobState, recorded: RecordedEvent, kind: str, detail: str) -> JobState:
    event = recorded.event
    anomaly = Anomaly(recorded.seq, str(event.event_id), event.type, kind, detail)
    return replace(state, anomalies=(*state.anomalies, anomaly))


def _apply(state: JobState, recorded: RecordedEvent) -> JobState | str:
    """The new state, or a string saying why the event does not apply."""
    event: JobEvent = recorded.event
    match event:
        case Submitted():
            return _submitted(state, event, recorded)
        case Reserved() | Heartbeat() | Completed() | Failed():
            return _node_report(state, event, recorded)
        case Expired():
            return _expired(state, event, recorded)
        case Routed():
            return _routed(state, event, recorded)
        case Retried() | Rerouted() | Redriven():
            return _republished(state, event, recorded)
        case DeadLettered():
            return _dead_lettered(state, event)
        case Cancelled():
            return _terminal_from_live(state, JobStatus.CANCELLED, event.reason or "cancelled")
        case _:
            assert_never(event)


def _submitted(state: JobState, event: Submitted, recorded: RecordedEvent) -> JobState | str:
    if state.status is not None:
        return "duplicate_submission: the job was already submitted"
    spec = JobSpec(
        job_type=event.job_type,
        model=event.model,
        priority=event.priority,
        tenant=event.tenant,
        pool=event.pool,
        queue=event.queue,
        payload_json=json.dumps(event.payload, sort_keys=True, separators=(",", ":")),
        max_attempts=event.max_attempts,
        ttl_seconds=event.ttl_seconds,
        lease_seconds=event.lease_seconds,
        retry=event.retry,
        fallback_pools=event.fallback_pools,
        reroute_after_failures=event.reroute_after_failures,
    )
    return replace(
        state,
        status=JobStatus.QUEUED,
        attempt=event.attempt,
        redrive_base=event.attempt - 1,
        spec=spec,
        pool=event.pool,
        queue=event.queue,
        submitted_at=recorded.recorded_at,
        ttl_from=recorded.recorded_at,
    )


def _node_report(
    state: JobState, event: Reserved | Heartbeat | Completed | Failed, recorded: RecordedEvent
) -> JobState | str:
    if state.status is None or state.is_terminal:
        return f"{event.type} report"
    if event.attempt != state.attempt:
        kind = "stale" if event.attempt < state.attempt else "future"
        return f"{kind}_attempt: {event.type} for attempt {event.attempt}, current {state.attempt}"
    match event:
        case Reserved():
            return _reserved(state, event, recorded)
        case Heartbeat():
            return _heartbeat(state, event, recorded)
        case Completed():
            done = replace(state, status=JobStatus.COMPLETED, node_id=event.node_id)
            return _flag_unreserved(state, done, recorded)
        case _:  # Failed, the only type left: a wildcard leaves no unreachable no-match exit
            return _failed(state, event, recorded)


def _flag_unreserved(
    before: JobState, after: JobState | str, recorded: RecordedEvent
) -> JobState | str:
    """Accept a report that skipped the reservation or came after the lease ran out, but flag it."""
    if isinstance(after, str) or before.status is JobStatus.RESERVED:
        return after
    kind = "late_report" if before.status is JobStatus.COOLING_DOWN else "not_reserved"
    return _flag(after, recorded, kind, f"{recorded.event.type} while {before.status}")


def _reserved(state: JobState, event: Reserved, recorded: RecordedEvent) -> JobState | str:
    if state.status is not JobStatus.QUEUED:
        return f"reservation while {state.status}"
    return replace(
        state,
        status=JobStatus.RESERVED,
        node_id=event.node_id,
        lease_from=recorded.recorded_at,
        lease_seconds=event.lease_seconds,
    )


def _heartbeat(state: JobState, event: Heartbeat, recorded: RecordedEvent) -> JobState | str:
    if state.status is not JobStatus.RESERVED:
        return f"heartbeat while {state.status}"
    if event.node_id != state.node_id:
        return f"heartbeat from {event.node_id}, reserved by {state.node_id}"
    return replace(state, lease_from=recorded.recorded_at)


def _failed(state: JobState, event: Failed, recorded: RecordedEvent) -> JobState | str:
    if state.status is JobStatus.COOLING_DOWN:
        return "duplicate_report: failure of an attempt that already ended"
    cooled = _cool_down(state, recorded, event.error_code, event.error_message, event.retryable)
    return _flag_unreserved(state, cooled, recorded)


def _cool_down(
    state: JobState, recorded: RecordedEvent, code: str, message: str, retryable: bool
) -> JobState:
    return replace(
        state,
        status=JobStatus.COOLING_DOWN,
        cooling_since=recorded.recorded_at,
        last_error_code=code,
        last_error_message=message,
        last_failure_retryable=retryable,
        failures_on_pool=state.failures_on_pool + 1,
        lease_from=None,
        lease_seconds=None,
        routing=None,
    )


def _routed(state: JobState, event: Routed, recorded: RecordedEvent) -> JobState | str:
    """A routing plugin's answer for the cooldown under way: the republish will follow it."""
    if state.status is not JobStatus.COOLING_DOWN or event.attempt != state.attempt:
        return f"routing of attempt {event.attempt} while {state.status} (attempt {state.attempt})"
    if state.routing is not None:
        return "duplicate_routing: the cooldown already has a routing answer"
    return _routing_fallback(replace(state, routing=event.routing), event.routing, recorded)


def _routing_fallback(state: JobState, routing: RoutingRecord, recorded: RecordedEvent) -> JobState:
    """Flag a plugin that failed or answered nonsense (the policy's rule decided instead)."""
    if routing.fallback is None:
        return state
    detail = f"plugin {routing.plugin} {routing.version} {routing.fallback}; the policy decided"
    return _flag(state, recorded, "routing_fallback", detail)


def _expired(state: JobState, event: Expired, recorded: RecordedEvent) -> JobState | str:
    if event.reason is ExpiryReason.TTL:
        return _terminal_from_live(state, JobStatus.EXPIRED, "ttl")
    if state.status is not JobStatus.RESERVED or event.attempt != state.attempt:
        return f"lease expiry of attempt {event.attempt} while {state.status}"
    return _cool_down(state, recorded, LEASE_EXPIRED_CODE, event.detail or "lease ran out", True)


def _republished(
    state: JobState, event: Retried | Rerouted | Redriven, recorded: RecordedEvent
) -> JobState | str:
    wanted = JobStatus.DEAD_LETTERED if isinstance(event, Redriven) else JobStatus.COOLING_DOWN
    if state.status is not wanted:
        return f"{event.type} while {state.status}"
    if event.attempt != state.attempt + 1:
        return f"{event.type} to attempt {event.attempt} after attempt {state.attempt}"
    new_pool = event.pool != state.pool or isinstance(event, Redriven)
    queued = replace(
        state,
        status=JobStatus.QUEUED,
        attempt=event.attempt,
        pool=event.pool,
        queue=event.queue,
        node_id=None,
        cooling_since=None,
        routing=None,
        terminal_reason=None,
        failures_on_pool=0 if new_pool else state.failures_on_pool,
        fallback_index=state.fallback_index + 1
        if isinstance(event, Rerouted)
        else state.fallback_index,
        redrive_base=event.attempt - 1 if isinstance(event, Redriven) else state.redrive_base,
        ttl_from=recorded.recorded_at if isinstance(event, Redriven) else state.ttl_from,
    )
    routing = None if isinstance(event, Redriven) else event.routing
    if routing is None or state.routing is not None:  # a ``routed`` event flagged it already
        return queued
    return _routing_fallback(queued, routing, recorded)  # a log from before ``routed`` existed


def _dead_lettered(state: JobState, event: DeadLettered) -> JobState | str:
    return _terminal_from_live(state, JobStatus.DEAD_LETTERED, str(event.reason))


def _terminal_from_live(state: JobState, status: JobStatus, reason: str) -> JobState | str:
    if state.status is None or state.is_terminal:
        return f"{status} of a job that is not live"
    return replace(
        state,
        status=status,
        terminal_reason=reason,
        lease_from=None,
        lease_seconds=None,
        routing=None,
    )

"""Decisions: what Jobtrail records next for a job, given its state, the time and the policy.

Pure and deterministic: time is passed in, jitter comes from a hash of (job_id, attempt), and a
derived event's id is a UUIDv5 of what was decided, so deciding the same thing twice (after a
crash, or on another tracker) yields the same event, which the log then stores once.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from app.domain.events import (
    DeadLettered,
    DeadLetterReason,
    Expired,
    ExpiryReason,
    JobEvent,
    PoolFigures,
    Rerouted,
    Retried,
    Routed,
    RoutingRecord,
)
from app.domain.policy import JobPolicy, Policy, RetrySettings
from app.domain.routing import RoutingChoice, RoutingRequest
from app.domain.state import JobSpec, JobState, JobStatus

JOBTRAIL_SOURCE = "jobtrail"
DERIVED_NAMESPACE = uuid.UUID("8f5d6a52-3f7e-4d51-9a7c-0b6c2e4c1a11")


@dataclass(frozen=True, slots=True)
class Deadline:
    """When a job next needs a decision, and why (lease, ttl, cooldown or now)."""

    at: datetime
    kind: str


def derived_event_id(job_id: str, event_type: str, attempt: int, reason: str = "") -> uuid.UUID:
    """The id of a decision: the same decision always gets the same id."""
    return uuid.uuid5(DERIVED_NAMESPACE, f"{job_id}|{event_type}|{attempt}|{reason}")


def jitter_factor(job_id: str, attempt: int, jitter: float) -> float:
    """A factor in [1 - jitter, 1 + jitter), fixed by (job_id, attempt)."""
    digest = hashlib.sha256(f"{job_id}:{attempt}".encode()).digest()
    unit = int.from_bytes(digest[:8], "big") / 2**64
    return 1.0 + jitter * (2.0 * unit - 1.0)


def cooldown(
    retry: RetrySettings, failure_number: int, job_id: str, attempt: int, jitter: float
) -> timedelta:
    """initial × coefficient^(n−1), capped at the maximum, then jittered deterministically."""
    initial = retry.initial_interval.total_seconds()
    maximum = retry.maximum_interval.total_seconds()
    exponent = max(failure_number - 1, 0) * math.log(retry.backoff_coefficient)
    capped = (
        maximum
        if exponent > math.log(max(maximum, initial) / initial)
        else initial * math.exp(exponent)
    )
    return timedelta(seconds=min(capped, maximum) * jitter_factor(job_id, attempt, jitter))


def next_deadline(state: JobState, policy: Policy) -> Deadline | None:
    """When ``decide`` will next have something to say about this job, if ever."""
    if state.spec is None or state.status is None or state.is_terminal:
        return None
    rules = policy.for_job(state.spec)
    ttl = Deadline(_ttl_deadline(state, rules), "ttl")
    if state.status is JobStatus.QUEUED:
        return ttl
    if state.status is JobStatus.RESERVED:
        return Deadline(_lease_deadline(state, rules), "lease")
    assert state.cooling_since is not None
    if _give_up_reason(state, rules) is not None:
        return Deadline(state.cooling_since, "now")
    retry_at = state.cooling_since + _cooldown_of(state, policy, rules)
    return ttl if ttl.at <= retry_at else Deadline(retry_at, "cooldown")


def decide(state: JobState, now: datetime, policy: Policy) -> tuple[JobEvent, ...]:
    """The events Jobtrail records for this job at ``now`` (usually none).

    A routing plugin's answer for the cooldown under way is part of the state (folded from its
    ``routed`` event): its pool and cooldown replace the policy's rule, and the republish
    carries a copy. So a plugin's decision is reproduced from the log, without the plugin.
    """
    if state.spec is None or state.status is None or state.is_terminal:
        return ()
    rules = policy.for_job(state.spec)
    if state.status is JobStatus.QUEUED:
        return _expire_ttl(state, now) if now >= _ttl_deadline(state, rules) else ()
    if state.status is JobStatus.RESERVED:
        return _expire_lease(state, now) if now >= _lease_deadline(state, rules) else ()
    return _after_failure(state, state.spec, now, policy, rules)


def routing_plugin_for(state: JobState, policy: Policy, only: str | None = None) -> str | None:
    """The routing plugin to ask about this job now: ``only`` or the one its rules name, if the
    job is cooling down towards a republish (not towards a dead letter) and its cooldown has no
    recorded answer yet; None otherwise."""
    if state.spec is None or state.status is not JobStatus.COOLING_DOWN:
        return None
    if state.routing is not None:
        return None
    rules = policy.for_job(state.spec)
    name = only or rules.routing
    if name is None or _give_up_reason(state, rules) is not None:
        return None
    return name


def routing_request(
    state: JobState, policy: Policy, fleet: tuple[PoolFigures, ...]
) -> RoutingRequest:
    """What a routing plugin is asked about a cooling job (``routing_plugin_for`` named one)."""
    assert state.spec is not None and state.status is JobStatus.COOLING_DOWN
    rules = policy.for_job(state.spec)
    rule = RoutingChoice(_rule_pool(state, rules), _policy_cooldown(state, policy, rules))
    candidates = tuple(p for p in dict.fromkeys(rules.fallback_pools) if p != state.pool)
    return RoutingRequest(state=state, fleet=fleet, candidates=candidates, rule=rule)


def deciding_state(state: JobState, event: JobEvent) -> JobState:
    """The state a recorded decision was decided from. A republish recorded before ``routed``
    events existed carries the plugin's answer itself, with no ``routed`` event before it."""
    if (
        isinstance(event, Retried | Rerouted)
        and event.routing is not None
        and state.routing is None
    ):
        return replace(state, routing=event.routing)
    return state


def routed(state: JobState, now: datetime, record: RoutingRecord) -> Routed:
    """The decision that records a routing plugin's answer for the job's cooldown: one id per
    attempt, so two trackers asking at once record the answer once (the first one appended)."""
    return Routed(
        event_id=derived_event_id(state.job_id, "routed", state.attempt),
        job_id=state.job_id,
        occurred_at=now,
        attempt=state.attempt,
        source=JOBTRAIL_SOURCE,
        routing=record,
    )


def _after_failure(
    state: JobState,
    spec: JobSpec,
    now: datetime,
    policy: Policy,
    rules: JobPolicy,
) -> tuple[JobEvent, ...]:
    reason = _give_up_reason(state, rules)
    if reason is not None:
        detail = f"{state.last_error_code}: {state.last_error_message}"
        return (_dead_letter(state, now, reason, detail),)
    if now >= _ttl_deadline(state, rules):
        return _expire_ttl(state, now)
    assert state.cooling_since is not None
    if now < state.cooling_since + _cooldown_of(state, policy, rules):
        return ()
    return (_republish(state, spec, now, policy, rules),)


def _give_up_reason(state: JobState, rules: JobPolicy) -> DeadLetterReason | None:
    if not state.last_failure_retryable or state.last_error_code in rules.non_retryable_errors:
        return DeadLetterReason.NON_RETRYABLE
    if state.attempt - state.redrive_base >= rules.max_attempts:
        return DeadLetterReason.RETRIES_EXHAUSTED
    return None


def _rule_pool(state: JobState, rules: JobPolicy) -> str | None:
    """The policy's reroute rule: the next fallback pool after k failures here, else stay."""
    fallback = rules.fallback_pools
    threshold = rules.reroute_after_failures
    if (
        threshold is not None
        and state.failures_on_pool >= threshold
        and state.fallback_index < len(fallback)
    ):
        return fallback[state.fallback_index]
    return None


def _republish(
    state: JobState,
    spec: JobSpec,
    now: datetime,
    policy: Policy,
    rules: JobPolicy,
) -> JobEvent:
    assert state.pool is not None and state.queue is not None
    attempt = state.attempt + 1
    routing = state.routing
    if routing is None:
        pool = _rule_pool(state, rules)
    else:
        pool = routing.pool if routing.pool != state.pool else None
    if pool is not None:
        return Rerouted(
            event_id=derived_event_id(state.job_id, "rerouted", attempt),
            job_id=state.job_id,
            occurred_at=now,
            attempt=attempt,
            source=JOBTRAIL_SOURCE,
            from_pool=state.pool,
            pool=pool,
            queue=policy.queue_for(pool, spec.job_type),
            routing=routing,
        )
    return Retried(
        event_id=derived_event_id(state.job_id, "retried", attempt),
        job_id=state.job_id,
        occurred_at=now,
        attempt=attempt,
        source=JOBTRAIL_SOURCE,
        pool=state.pool,
        queue=state.queue,
        routing=routing,
    )


def _expire_ttl(state: JobState, now: datetime) -> tuple[JobEvent, ...]:
    return (_expired(state, now, ExpiryReason.TTL, "time to live ran out"),)


def _expire_lease(state: JobState, now: datetime) -> tuple[JobEvent, ...]:
    return (_expired(state, now, ExpiryReason.LEASE, f"lease of {state.node_id} ran out"),)


def _expired(state: JobState, now: datetime, reason: ExpiryReason, detail: str) -> JobEvent:
    return Expired(
        event_id=derived_event_id(state.job_id, "expired", state.attempt, str(reason)),
        job_id=state.job_id,
        occurred_at=now,
        attempt=state.attempt,
        source=JOBTRAIL_SOURCE,
        reason=reason,
        detail=detail,
    )


def _dead_letter(state: JobState, now: datetime, reason: DeadLetterReason, detail: str) -> JobEvent:
    return DeadLettered(
        event_id=derived_event_id(state.job_id, "dead_lettered", state.attempt, str(reason)),
        job_id=state.job_id,
        occurred_at=now,
        attempt=state.attempt,
        source=JOBTRAIL_SOURCE,
        reason=reason,
        detail=detail[:4000],
    )


def _ttl_deadline(state: JobState, rules: JobPolicy) -> datetime:
    assert state.ttl_from is not None
    return state.ttl_from + rules.ttl


def _lease_deadline(state: JobState, rules: JobPolicy) -> datetime:
    assert state.lease_from is not None
    own = state.lease_seconds
    return state.lease_from + (timedelta(seconds=own) if own is not None else rules.lease_timeout)


def _cooldown_of(state: JobState, policy: Policy, rules: JobPolicy) -> timedelta:
    """The cooldown under way: the routing plugin's recorded answer, else the policy's."""
    if state.routing is not None:
        return timedelta(seconds=state.routing.cooldown_seconds)
    return _policy_cooldown(state, policy, rules)


def _policy_cooldown(state: JobState, policy: Policy, rules: JobPolicy) -> timedelta:
    failures = state.attempt - state.redrive_base
    return cooldown(rules.retry, failures, state.job_id, state.attempt, policy.jitter)

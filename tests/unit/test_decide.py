"""decide / next_deadline: TTL, leases, give-up rules, cooldowns, retries and reroutes."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest

from app.domain.decide import (
    DERIVED_NAMESPACE,
    JOBTRAIL_SOURCE,
    Deadline,
    cooldown,
    decide,
    derived_event_id,
    jitter_factor,
    next_deadline,
)
from app.domain.events import (
    DeadLettered,
    DeadLetterReason,
    Expired,
    ExpiryReason,
    JobEvent,
    Rerouted,
    Retried,
    RetryOverride,
    canonical_json,
    parse_event,
)
from app.domain.policy import Policy, RetrySettings
from app.domain.state import JobState, JobStatus
from tests.unit import factories as f
from tests.unit.factories import JOB, NODE, T0, History

POLICY = (
    f.small_policy()
)  # max 4 attempts, lease 60 s, TTL 1 h, cooldown 5 s × 2^(n-1) ≤ 40 s, ±20 %
NO_JITTER = Policy.from_toml(f.TEST_POLICY_TOML.replace("jitter = 0.2", "jitter = 0"))
TICK = timedelta(microseconds=1)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def job(**submitted: Any) -> History:
    history = History()
    history.add(f.submitted(at=at(0), **submitted))
    return history


def cooling(attempt: int = 1, fail_at: float = 10, **failure: Any) -> History:
    """A job that reserved and failed attempt 1 (and, for attempt > 1, retried until it)."""
    history = job(max_attempts=10)
    for n in range(1, attempt + 1):
        if n > 1:
            history.add(f.retried(at=at(fail_at - 2), attempt=n, pool="shared", queue="q"))
        history.add(f.reserved(at=at(fail_at - 1), attempt=n))
        history.add(f.failed(at=at(fail_at), attempt=n, **failure))
    return history


def retry_at(state: JobState, policy: Policy = POLICY) -> datetime:
    assert state.spec is not None and state.cooling_since is not None
    rules = policy.for_job(state.spec)
    n = state.attempt - state.redrive_base
    return state.cooling_since + cooldown(
        rules.retry, n, state.job_id, state.attempt, policy.jitter
    )


def only(events: tuple[JobEvent, ...]) -> JobEvent:
    assert len(events) == 1
    return events[0]


# --- nothing to decide --------------------------------------------------------------------------


def test_nothing_is_decided_for_an_unknown_job() -> None:
    state = JobState(job_id=JOB)
    assert decide(state, at(10**6), POLICY) == ()
    assert next_deadline(state, POLICY) is None
    unknown = f.fold_events(f.failed(at=at(0), retryable=False))
    assert decide(unknown, at(10**6), POLICY) == ()
    assert next_deadline(unknown, POLICY) is None


@pytest.mark.parametrize(
    "finisher",
    [
        lambda: f.completed(at=at(2)),
        lambda: f.cancelled(at=at(2)),
        lambda: f.dead_lettered(at=at(2)),
        lambda: f.expired(at=at(2), reason=ExpiryReason.TTL),
    ],
)
def test_nothing_is_decided_for_a_terminal_job(finisher: Callable[[], JobEvent]) -> None:
    history = job()
    history.add(f.reserved(at=at(1)))
    state = history.add(finisher())
    assert state.is_terminal
    assert decide(state, at(10**6), POLICY) == ()
    assert next_deadline(state, POLICY) is None


# --- TTL of a queued job ------------------------------------------------------------------------


def test_a_queued_job_expires_when_its_ttl_runs_out() -> None:
    history = History()
    state = history.add(f.submitted(at=at(0)), recorded_at=at(5))
    deadline = at(5 + 3600)  # from recorded_at, not occurred_at
    assert next_deadline(state, POLICY) == Deadline(deadline, "ttl")
    assert decide(state, deadline - TICK, POLICY) == ()
    event = only(decide(state, deadline, POLICY))
    assert event == Expired(
        event_id=derived_event_id(JOB, "expired", 1, "ttl"),
        job_id=JOB,
        occurred_at=deadline,
        attempt=1,
        source=JOBTRAIL_SOURCE,
        reason=ExpiryReason.TTL,
        detail="time to live ran out",
    )
    later = only(decide(state, deadline + timedelta(hours=5), POLICY))
    assert later.event_id == event.event_id
    assert later.occurred_at == deadline + timedelta(hours=5)


def test_the_jobs_own_ttl_wins() -> None:
    state = job(ttl_seconds=90).state
    assert next_deadline(state, POLICY) == Deadline(at(90), "ttl")
    assert decide(state, at(89.999999), POLICY) == ()
    assert isinstance(only(decide(state, at(90), POLICY)), Expired)


def test_a_redrive_gives_the_job_a_fresh_ttl() -> None:
    history = cooling(retryable=False)
    history.add(only(decide(history.state, at(11), POLICY)))
    state = history.add(f.redriven(at=at(7200), attempt=2, pool="shared"))
    assert state.status is JobStatus.QUEUED
    assert state.submitted_at == at(0)  # the submission is history; the TTL restarts
    assert next_deadline(state, POLICY) == Deadline(at(7200 + 3600), "ttl")
    assert decide(state, at(7200 + 3600) - TICK, POLICY) == ()
    assert only(decide(state, at(7200 + 3600), POLICY)).type == "expired"


# --- leases -------------------------------------------------------------------------------------


def test_a_reservation_expires_after_the_policys_lease() -> None:
    history = job()
    state = history.add(f.reserved(at=at(10)), recorded_at=at(12))
    assert next_deadline(state, POLICY) == Deadline(at(72), "lease")
    assert decide(state, at(72) - TICK, POLICY) == ()
    event = only(decide(state, at(72), POLICY))
    assert event == Expired(
        event_id=derived_event_id(JOB, "expired", 1, "lease"),
        job_id=JOB,
        occurred_at=at(72),
        attempt=1,
        source=JOBTRAIL_SOURCE,
        reason=ExpiryReason.LEASE,
        detail=f"lease of {NODE} ran out",
    )


def test_the_reservations_own_lease_wins_over_job_and_policy() -> None:
    history = job(lease_seconds=500)
    state = history.add(f.reserved(at=at(10), lease_seconds=20))
    assert next_deadline(state, POLICY) == Deadline(at(30), "lease")
    assert decide(state, at(30) - TICK, POLICY) == ()
    assert isinstance(only(decide(state, at(30), POLICY)), Expired)


def test_the_jobs_own_lease_applies_when_the_reservation_names_none() -> None:
    history = job(lease_seconds=500)
    state = history.add(f.reserved(at=at(10)))
    assert next_deadline(state, POLICY) == Deadline(at(510), "lease")


def test_a_heartbeat_moves_the_lease_deadline() -> None:
    history = job()
    history.add(f.reserved(at=at(10)))
    state = history.add(f.heartbeat(at=at(60)))
    assert next_deadline(state, POLICY) == Deadline(at(120), "lease")
    assert decide(state, at(100), POLICY) == ()


def test_a_reserved_job_is_not_expired_by_its_ttl_while_its_lease_holds() -> None:
    history = job(ttl_seconds=100)
    history.add(f.reserved(at=at(50)))
    state = history.add(f.heartbeat(at=at(100)))
    assert decide(state, at(150), POLICY) == ()
    assert next_deadline(state, POLICY) == Deadline(at(160), "lease")


# --- giving up ----------------------------------------------------------------------------------


def test_a_non_retryable_failure_is_dead_lettered_at_once() -> None:
    state = cooling(retryable=False, error_code="oom", error_message="out of memory").state
    assert next_deadline(state, POLICY) == Deadline(at(10), "now")
    event = only(decide(state, at(10), POLICY))
    assert event == DeadLettered(
        event_id=derived_event_id(JOB, "dead_lettered", 1, "non_retryable"),
        job_id=JOB,
        occurred_at=at(10),
        attempt=1,
        source=JOBTRAIL_SOURCE,
        reason=DeadLetterReason.NON_RETRYABLE,
        detail="oom: out of memory",
    )


def test_a_non_retryable_error_code_is_dead_lettered_even_if_reported_retryable() -> None:
    state = cooling(retryable=True, error_code="invalid_input").state
    event = only(decide(state, at(10), POLICY))
    assert isinstance(event, DeadLettered)
    assert event.reason is DeadLetterReason.NON_RETRYABLE
    assert next_deadline(state, POLICY) == Deadline(at(10), "now")


def test_a_long_error_message_is_cut_to_fit_the_detail() -> None:
    state = cooling(retryable=False, error_message="x" * 4000).state
    event = only(decide(state, at(10), POLICY))
    assert isinstance(event, DeadLettered)
    assert len(event.detail) == 4000
    assert event.detail.startswith("oom: xxx")


def test_the_last_allowed_attempt_is_dead_lettered_when_it_fails() -> None:
    history = job(max_attempts=2)
    history.add(f.reserved(at=at(1)))
    history.add(f.failed(at=at(2)))
    assert only(decide(history.state, at(1000), POLICY)).type == "retried"
    history.add(only(decide(history.state, at(1000), POLICY)))
    history.add(f.reserved(at=at(1001), attempt=2))
    state = history.add(f.failed(at=at(1002), attempt=2, error_message="again"))
    assert next_deadline(state, POLICY) == Deadline(at(1002), "now")
    event = only(decide(state, at(1002), POLICY))
    assert isinstance(event, DeadLettered)
    assert event.reason is DeadLetterReason.RETRIES_EXHAUSTED
    assert event.event_id == derived_event_id(JOB, "dead_lettered", 2, "retries_exhausted")
    assert event.detail == "oom: again"


def test_a_lease_expiry_counts_as_an_attempt() -> None:
    history = job(max_attempts=1)
    history.add(f.reserved(at=at(1)))
    state = history.add(only(decide(history.state, at(61), POLICY)))
    assert state.last_error_code == "lease_expired"
    event = only(decide(state, at(61), POLICY))
    assert isinstance(event, DeadLettered)
    assert event.reason is DeadLetterReason.RETRIES_EXHAUSTED
    assert event.detail == f"lease_expired: lease of {NODE} ran out"


def test_non_retryable_wins_over_exhausted() -> None:
    history = job(max_attempts=1)
    history.add(f.reserved(at=at(1)))
    state = history.add(f.failed(at=at(2), retryable=False))
    event = only(decide(state, at(2), POLICY))
    assert isinstance(event, DeadLettered)
    assert event.reason is DeadLetterReason.NON_RETRYABLE


def test_giving_up_wins_over_the_ttl() -> None:
    state = cooling(retryable=False).state
    event = only(decide(state, at(10**5), POLICY))
    assert isinstance(event, DeadLettered)


def test_a_redrive_gives_a_fresh_budget() -> None:
    history = job(max_attempts=1)
    history.add(f.reserved(at=at(1)))
    history.add(f.failed(at=at(2)))
    history.add(only(decide(history.state, at(2), POLICY)))
    history.add(f.redriven(at=at(3), attempt=2))
    history.add(f.reserved(at=at(4), attempt=2))
    state = history.add(f.failed(at=at(5), attempt=2))
    assert (state.attempt, state.redrive_base) == (2, 1)
    event = only(decide(state, at(5), POLICY))
    assert isinstance(event, DeadLettered)
    assert event.reason is DeadLetterReason.RETRIES_EXHAUSTED
    assert event.event_id == derived_event_id(JOB, "dead_lettered", 2, "retries_exhausted")
    bigger = job(max_attempts=2)
    bigger.extend(entry.event for entry in history.entries[1:])
    assert (bigger.state.status, bigger.state.attempt) == (JobStatus.COOLING_DOWN, 2)
    assert decide(bigger.state, at(5), POLICY) == ()
    assert only(decide(bigger.state, at(100), POLICY)).attempt == 3


# --- cooldown and retry -------------------------------------------------------------------------


def test_no_retry_before_the_cooldown_ends_and_a_retry_at_its_end() -> None:
    state = cooling().state
    due = retry_at(state)
    assert due == at(10) + timedelta(seconds=5 * jitter_factor(JOB, 1, 0.2))
    assert next_deadline(state, POLICY) == Deadline(due, "cooldown")
    assert decide(state, at(10), POLICY) == ()
    assert decide(state, due - TICK, POLICY) == ()
    event = only(decide(state, due, POLICY))
    assert event == Retried(
        event_id=derived_event_id(JOB, "retried", 2),
        job_id=JOB,
        occurred_at=due,
        attempt=2,
        source=JOBTRAIL_SOURCE,
        pool="shared",
        queue="jobtrail.work.shared.sync",
    )


def test_the_cooldown_grows_with_each_failure() -> None:
    waits = []
    for attempt in (1, 2, 3, 4, 5, 6):
        state = cooling(attempt=attempt).state
        assert state.attempt == attempt
        waits.append((retry_at(state, NO_JITTER) - state.cooling_since).total_seconds())  # type: ignore[operator]
        assert decide(state, retry_at(state, NO_JITTER) - TICK, NO_JITTER) == ()
        assert only(decide(state, retry_at(state, NO_JITTER), NO_JITTER)).attempt == attempt + 1
    assert waits == [5, 10, 20, 40, 40, 40]


def test_the_cooldown_restarts_after_a_redrive() -> None:
    history = cooling(attempt=3, retryable=False)
    history.add(only(decide(history.state, at(100), POLICY)))
    history.add(f.redriven(at=at(101), attempt=4))
    history.add(f.reserved(at=at(102), attempt=4))
    state = history.add(f.failed(at=at(103), attempt=4))
    assert retry_at(state, NO_JITTER) == at(108)
    assert decide(state, at(108) - TICK, NO_JITTER) == ()
    assert only(decide(state, at(108), NO_JITTER)).type == "retried"


def test_the_jobs_retry_override_shapes_its_cooldown() -> None:
    history = job(
        retry=RetryOverride(
            initial_interval_seconds=1, backoff_coefficient=3, max_interval_seconds=100
        )
    )
    history.add(f.reserved(at=at(1)))
    state = history.add(f.failed(at=at(2)))
    assert next_deadline(state, NO_JITTER) == Deadline(at(3), "cooldown")


def test_the_ttl_ends_a_cooling_job() -> None:
    history = job(ttl_seconds=100)
    history.add(f.reserved(at=at(1)))
    state = history.add(f.failed(at=at(98)))
    assert next_deadline(state, POLICY) == Deadline(at(100), "ttl")
    assert decide(state, at(100) - TICK, POLICY) == ()
    event = only(decide(state, at(100), POLICY))
    assert isinstance(event, Expired)
    assert event.reason is ExpiryReason.TTL
    assert decide(history.add(event), at(200), POLICY) == ()


def test_a_cooldown_that_ends_before_the_ttl_is_the_deadline() -> None:
    history = job(ttl_seconds=100)
    history.add(f.reserved(at=at(1)))
    state = history.add(f.failed(at=at(10)))
    assert next_deadline(state, POLICY) == Deadline(retry_at(state), "cooldown")


def test_when_the_ttl_and_cooldown_coincide_the_ttl_wins() -> None:
    history = job(ttl_seconds=15)
    history.add(f.reserved(at=at(1)))
    state = history.add(f.failed(at=at(10)))
    assert retry_at(state, NO_JITTER) == at(15)
    assert next_deadline(state, NO_JITTER) == Deadline(at(15), "ttl")
    assert isinstance(only(decide(state, at(15), NO_JITTER)), Expired)


# --- rerouting ----------------------------------------------------------------------------------


def _fail(history: History, now: float, attempt: int) -> JobState:
    history.add(f.reserved(at=at(now), attempt=attempt))
    return history.add(f.failed(at=at(now + 1), attempt=attempt))


def _republish(history: History, now: float) -> JobEvent:
    event = only(decide(history.state, at(now), POLICY))
    history.add(event)
    return event


def test_after_k_failures_on_a_pool_the_job_moves_to_the_next_fallback() -> None:
    history = job(pool="gpu-a", queue="qa", max_attempts=10)
    _fail(history, 1, 1)
    first = _republish(history, 100)
    assert isinstance(first, Retried)
    assert (first.pool, first.queue) == ("gpu-a", "qa")
    _fail(history, 101, 2)
    second = _republish(history, 200)
    assert second == Rerouted(
        event_id=derived_event_id(JOB, "rerouted", 3),
        job_id=JOB,
        occurred_at=at(200),
        attempt=3,
        source=JOBTRAIL_SOURCE,
        from_pool="gpu-a",
        pool="gpu-b",
        queue="inference.gpu-b.sync",  # from the policy's [queues]
    )
    assert (history.state.failures_on_pool, history.state.fallback_index) == (0, 1)
    # The rules are those of the pool the job was submitted to: one failure on gpu-b is not enough.
    _fail(history, 201, 3)
    third = _republish(history, 300)
    assert isinstance(third, Retried)
    assert (third.pool, third.queue) == ("gpu-b", "inference.gpu-b.sync")
    _fail(history, 301, 4)
    fourth = _republish(history, 400)
    assert isinstance(fourth, Rerouted)
    assert (fourth.from_pool, fourth.pool, fourth.queue) == (
        "gpu-b",
        "shared",
        "jobtrail.work.shared.sync",
    )
    _fail(history, 401, 5)
    fifth = _republish(history, 500)
    assert isinstance(fifth, Retried)  # one failure on shared
    _fail(history, 501, 6)
    sixth = _republish(history, 600)
    assert isinstance(sixth, Retried)  # two on shared, but the fallback list is used up
    assert (sixth.pool, history.state.failures_on_pool, history.state.fallback_index) == (
        "shared",
        2,
        2,
    )


def test_the_jobs_own_reroute_rules_walk_its_whole_fallback_list() -> None:
    history = job(
        pool="gpu-a", max_attempts=10, fallback_pools=("gpu-b", "shared"), reroute_after_failures=1
    )
    _fail(history, 1, 1)
    first = _republish(history, 100)
    assert isinstance(first, Rerouted)
    assert (first.from_pool, first.pool, first.queue) == ("gpu-a", "gpu-b", "inference.gpu-b.sync")
    _fail(history, 101, 2)
    second = _republish(history, 200)
    assert isinstance(second, Rerouted)
    assert (second.from_pool, second.pool, second.queue) == (
        "gpu-b",
        "shared",
        "jobtrail.work.shared.sync",
    )
    _fail(history, 201, 3)
    third = _republish(history, 300)
    assert isinstance(third, Retried)  # no fallback left: retry where it is
    assert (third.pool, third.queue) == ("shared", "jobtrail.work.shared.sync")
    assert history.state.fallback_index == 2


def test_without_a_threshold_fallback_pools_are_never_used() -> None:
    history = job(pool="shared", max_attempts=10, fallback_pools=("gpu-b",))
    for n in range(1, 5):
        _fail(history, n * 100, n)
        event = _republish(history, n * 100 + 50)
        assert isinstance(event, Retried)
        assert event.pool == "shared"


# --- the arithmetic -----------------------------------------------------------------------------

RETRY = RetrySettings(timedelta(seconds=5), 2.0, timedelta(seconds=40))


@pytest.mark.parametrize(
    ("failure", "seconds"), [(0, 5), (1, 5), (2, 10), (3, 20), (4, 40), (5, 40), (60, 40)]
)
def test_cooldown_is_exponential_and_capped(failure: int, seconds: float) -> None:
    assert cooldown(RETRY, failure, JOB, 1, 0.0) == timedelta(seconds=seconds)


def test_cooldown_with_a_coefficient_of_one_is_constant() -> None:
    flat = RetrySettings(timedelta(seconds=7), 1.0, timedelta(seconds=40))
    assert {cooldown(flat, n, JOB, n, 0.0) for n in range(1, 20)} == {timedelta(seconds=7)}


def test_cooldown_never_exceeds_a_maximum_below_the_initial_interval() -> None:
    odd = RetrySettings(timedelta(seconds=50), 2.0, timedelta(seconds=30))
    assert [cooldown(odd, n, JOB, n, 0.0) for n in (1, 2, 3)] == [timedelta(seconds=30)] * 3


def test_cooldown_does_not_overflow_for_huge_failure_counts() -> None:
    assert cooldown(RETRY, 10**6, JOB, 10**6, 0.0) == timedelta(seconds=40)


@pytest.mark.parametrize("attempt", range(1, 30))
def test_jitter_scales_the_cooldown_within_its_bounds(attempt: int) -> None:
    factor = jitter_factor(JOB, attempt, 0.2)
    assert 0.8 <= factor < 1.2
    base = cooldown(RETRY, attempt, JOB, attempt, 0.0).total_seconds()
    jittered = cooldown(RETRY, attempt, JOB, attempt, 0.2).total_seconds()
    assert jittered == pytest.approx(base * factor, abs=1e-6)
    assert 0.8 * base <= jittered <= 1.2 * base


def test_jitter_is_fixed_by_job_and_attempt() -> None:
    assert (
        jitter_factor(JOB, 1, 0.2)
        == jitter_factor(JOB, 1, 0.2)
        == pytest.approx(1.0330873379681003)
    )
    assert jitter_factor(JOB, 3, 0.2) == pytest.approx(0.8240724701505318)
    factors = {jitter_factor(JOB, attempt, 0.2) for attempt in range(1, 50)}
    assert len(factors) == 49
    assert jitter_factor("job-2", 1, 0.2) != jitter_factor(JOB, 1, 0.2)
    assert jitter_factor(JOB, 1, 0.0) == 1.0


def test_derived_event_ids_are_uuid5_of_the_decision() -> None:
    assert derived_event_id(JOB, "retried", 2) == uuid.uuid5(DERIVED_NAMESPACE, "job-1|retried|2|")
    assert derived_event_id(JOB, "expired", 1, "ttl") == uuid.uuid5(
        DERIVED_NAMESPACE, "job-1|expired|1|ttl"
    )
    ids = {
        derived_event_id(JOB, "expired", 1, "ttl"),
        derived_event_id(JOB, "expired", 1, "lease"),
        derived_event_id(JOB, "expired", 2, "ttl"),
        derived_event_id("job-2", "expired", 1, "ttl"),
        derived_event_id(JOB, "retried", 1, "ttl"),
    }
    assert len(ids) == 5


def test_the_same_decision_is_the_same_event() -> None:
    state = cooling().state
    due = retry_at(state)
    first, second = decide(state, due, POLICY), decide(state, due, POLICY)
    assert first == second
    assert canonical_json(only(first)) == canonical_json(only(second))
    assert only(decide(state, due + timedelta(minutes=1), POLICY)).event_id == only(first).event_id


def test_decided_events_are_valid_events_that_round_trip() -> None:
    for state, now in [
        (job().state, at(3600)),
        (cooling().state, at(3000)),
        (cooling(retryable=False).state, at(10)),
        (job().state, at(0)),
    ]:
        for event in decide(state, now, POLICY):
            assert parse_event(canonical_json(event)) == event
            assert event.source == JOBTRAIL_SOURCE
            assert event.job_id == JOB

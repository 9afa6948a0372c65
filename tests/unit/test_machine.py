"""evolve / fold: the lifecycle, the lenient cases and every kind of anomaly."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta

import pytest

from app.domain.chain import GENESIS_HASH, RecordedEvent
from app.domain.decide import Deadline, decide, next_deadline
from app.domain.events import (
    DeadLetterReason,
    ExpiryReason,
    JobEvent,
    JobType,
    Priority,
    RetryOverride,
)
from app.domain.machine import DEFAULT_SKEW_TOLERANCE, LEASE_EXPIRED_CODE, evolve, fold
from app.domain.state import TERMINAL, Anomaly, JobSpec, JobState, JobStatus
from tests.unit import factories as f
from tests.unit.factories import JOB, NODE, OTHER_NODE, T0, History

SMALL_POLICY = f.small_policy()


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def queued() -> History:
    history = History()
    history.add(f.submitted(at=at(0)))
    return history


def reserved_job(lease_seconds: float | None = None) -> History:
    history = queued()
    history.add(f.reserved(at=at(1), lease_seconds=lease_seconds))
    return history


def cooling_job() -> History:
    history = reserved_job()
    history.add(f.failed(at=at(2)))
    return history


def dead_job() -> History:
    history = cooling_job()
    history.add(
        f.dead_lettered(at=at(3), reason=DeadLetterReason.RETRIES_EXHAUSTED, source="jobtrail")
    )
    return history


def assert_only_bookkeeping_changed(
    before: JobState, after: JobState, new_anomalies: int = 1
) -> None:
    assert len(after.anomalies) == len(before.anomalies) + new_anomalies
    assert after.anomalies[: len(before.anomalies)] == before.anomalies
    assert (
        replace(
            after,
            anomalies=before.anomalies,
            last_seq=before.last_seq,
            updated_at=before.updated_at,
        )
        == before
    )


def add_anomalous(
    history: History, event: JobEvent, recorded_at: datetime | None = None
) -> Anomaly:
    before = history.state
    after = history.add(event, recorded_at)
    assert_only_bookkeeping_changed(before, after)
    return after.anomalies[-1]


# --- the lifecycle ------------------------------------------------------------------------------


def test_submission_queues_the_job_with_its_spec() -> None:
    event = f.submitted(
        at=at(0),
        attempt=1,
        job_type=JobType.BATCH,
        priority=Priority.BULK,
        pool="gpu-a",
        queue="qa",
        payload={"b": [1, 2], "a": "x"},
        max_attempts=5,
        ttl_seconds=60,
        lease_seconds=30,
        retry=RetryOverride(initial_interval_seconds=1),
        fallback_pools=("gpu-b",),
        reroute_after_failures=2,
    )
    state = fold([f.recorded(event, 1, at(7))])
    assert state == JobState(
        job_id=JOB,
        status=JobStatus.QUEUED,
        attempt=1,
        spec=JobSpec(
            job_type=JobType.BATCH,
            model="llama-3-8b",
            priority=Priority.BULK,
            tenant="acme",
            pool="gpu-a",
            queue="qa",
            payload_json='{"a":"x","b":[1,2]}',
            max_attempts=5,
            ttl_seconds=60,
            lease_seconds=30,
            retry=RetryOverride(initial_interval_seconds=1),
            fallback_pools=("gpu-b",),
            reroute_after_failures=2,
        ),
        pool="gpu-a",
        queue="qa",
        submitted_at=at(7),
        ttl_from=at(7),
        last_seq=1,
        updated_at=at(7),
    )
    assert not state.is_terminal


def test_a_resubmission_at_a_later_attempt_starts_its_own_retry_budget() -> None:
    state = f.fold_events(f.submitted(attempt=4))
    assert (state.attempt, state.redrive_base) == (4, 3)


def test_reservation_starts_a_lease_from_recorded_at() -> None:
    history = queued()
    state = history.add(f.reserved(at=at(5), lease_seconds=42), recorded_at=at(9))
    assert state.status is JobStatus.RESERVED
    assert (state.node_id, state.lease_from, state.lease_seconds) == (NODE, at(9), 42)
    assert state.anomalies == ()


def test_heartbeat_from_the_reserving_node_extends_the_lease() -> None:
    history = reserved_job(lease_seconds=42)
    state = history.add(f.heartbeat(at=at(30)), recorded_at=at(31))
    assert state.status is JobStatus.RESERVED
    assert (state.lease_from, state.lease_seconds) == (at(31), 42)
    assert state.anomalies == ()


def test_completion_of_the_reserved_attempt() -> None:
    state = reserved_job().add(f.completed(at=at(2), node_id=NODE))
    assert state.status is JobStatus.COMPLETED
    assert state.is_terminal
    assert state.node_id == NODE
    assert state.anomalies == ()


def test_failure_cools_the_job_down() -> None:
    history = reserved_job(lease_seconds=42)
    state = history.add(
        f.failed(at=at(2), error_code="oom", error_message="boom", retryable=False), at(3)
    )
    assert state.status is JobStatus.COOLING_DOWN
    assert state.cooling_since == at(3)
    assert (state.last_error_code, state.last_error_message, state.last_failure_retryable) == (
        "oom",
        "boom",
        False,
    )
    assert state.failures_on_pool == 1
    assert (state.lease_from, state.lease_seconds) == (None, None)
    assert state.attempt == 1
    assert state.anomalies == ()


def test_lease_expiry_cools_the_job_down_as_a_retryable_failure() -> None:
    state = reserved_job(lease_seconds=42).add(
        f.expired(at=at(50), reason=ExpiryReason.LEASE), at(51)
    )
    assert state.status is JobStatus.COOLING_DOWN
    assert state.cooling_since == at(51)
    assert (state.last_error_code, state.last_error_message) == (
        LEASE_EXPIRED_CODE,
        "lease ran out",
    )
    assert state.last_error_code == "lease_expired"
    assert state.last_failure_retryable is True
    assert state.failures_on_pool == 1
    assert (state.lease_from, state.lease_seconds) == (None, None)


def test_lease_expiry_keeps_its_detail_as_the_error_message() -> None:
    state = reserved_job().add(f.expired(at=at(50), reason=ExpiryReason.LEASE, detail="x-death"))
    assert state.last_error_message == "x-death"


@pytest.mark.parametrize("make", [queued, reserved_job, cooling_job])
def test_ttl_expiry_ends_a_live_job(make: Callable[[], History]) -> None:
    state = make().add(f.expired(at=at(100), reason=ExpiryReason.TTL))
    assert state.status is JobStatus.EXPIRED
    assert state.terminal_reason == "ttl"
    assert (state.lease_from, state.lease_seconds) == (None, None)
    assert state.anomalies == ()


def test_retry_requeues_the_next_attempt_on_the_same_pool() -> None:
    history = cooling_job()
    state = history.add(f.retried(at=at(20), attempt=2, pool="shared", queue="q2"))
    assert state.status is JobStatus.QUEUED
    assert (state.attempt, state.pool, state.queue) == (2, "shared", "q2")
    assert (state.node_id, state.cooling_since) == (None, None)
    assert state.failures_on_pool == 1  # same pool: failures there keep counting
    assert state.fallback_index == 0
    assert state.last_error_code == "oom"


def test_a_retry_to_another_pool_resets_its_failure_count() -> None:
    state = cooling_job().add(f.retried(at=at(20), attempt=2, pool="gpu-b"))
    assert (state.pool, state.failures_on_pool, state.fallback_index) == ("gpu-b", 0, 0)


def test_reroute_moves_to_the_next_fallback_pool() -> None:
    state = cooling_job().add(
        f.rerouted(at=at(20), attempt=2, from_pool="shared", pool="gpu-b", queue="qb")
    )
    assert state.status is JobStatus.QUEUED
    assert (state.attempt, state.pool, state.queue) == (2, "gpu-b", "qb")
    assert (state.failures_on_pool, state.fallback_index) == (0, 1)


def test_reserved_again_after_a_retry() -> None:
    history = cooling_job()
    history.add(f.retried(at=at(20), attempt=2))
    state = history.add(f.reserved(at=at(21), attempt=2, node_id=OTHER_NODE))
    assert (state.status, state.attempt, state.node_id) == (JobStatus.RESERVED, 2, OTHER_NODE)


@pytest.mark.parametrize("reason", list(DeadLetterReason))
@pytest.mark.parametrize("make", [queued, reserved_job, cooling_job])
def test_dead_lettering_ends_a_live_job(
    make: Callable[[], History], reason: DeadLetterReason
) -> None:
    state = make().add(f.dead_lettered(at=at(10), reason=reason))
    assert state.status is JobStatus.DEAD_LETTERED
    assert state.terminal_reason == str(reason)
    assert state.lease_from is None
    assert state.anomalies == ()


@pytest.mark.parametrize("make", [queued, reserved_job, cooling_job])
def test_cancellation_ends_a_live_job(make: Callable[[], History]) -> None:
    state = make().add(f.cancelled(at=at(10), reason="customer asked"))
    assert (state.status, state.terminal_reason) == (JobStatus.CANCELLED, "customer asked")
    assert state.lease_from is None


def test_cancellation_without_a_reason_says_cancelled() -> None:
    assert queued().add(f.cancelled(at=at(10))).terminal_reason == "cancelled"


def test_redrive_brings_a_dead_letter_back_as_a_fresh_budget() -> None:
    history = dead_job()
    state = history.add(f.redriven(at=at(30), attempt=2, pool="gpu-b", queue="qb"))
    assert state.status is JobStatus.QUEUED
    assert (state.attempt, state.redrive_base, state.pool, state.queue) == (2, 1, "gpu-b", "qb")
    assert (state.terminal_reason, state.failures_on_pool, state.node_id) == (None, 0, None)


def test_redrive_to_the_same_pool_still_resets_its_failure_count() -> None:
    state = dead_job().add(f.redriven(at=at(30), attempt=2, pool="shared"))
    assert state.failures_on_pool == 0


def test_the_whole_life_of_a_rerouted_and_redriven_job() -> None:
    history = History()
    history.extend(
        [
            f.submitted(at=at(0), pool="gpu-a"),
            f.reserved(at=at(1)),
            f.failed(at=at(2)),
            f.retried(at=at(10), attempt=2, pool="gpu-a"),
            f.reserved(at=at(11), attempt=2),
            f.expired(at=at(80), attempt=2),
            f.rerouted(at=at(90), attempt=3, from_pool="gpu-a", pool="gpu-b"),
            f.reserved(at=at(91), attempt=3),
            f.failed(at=at(92), attempt=3, retryable=False, error_code="invalid_input"),
            f.dead_lettered(at=at(93), attempt=3, reason=DeadLetterReason.NON_RETRYABLE),
            f.redriven(at=at(200), attempt=4, pool="gpu-b"),
            f.reserved(at=at(201), attempt=4),
            f.heartbeat(at=at(250), attempt=4),
            f.completed(at=at(260), attempt=4),
        ]
    )
    state = history.state
    assert state.status is JobStatus.COMPLETED
    assert (state.attempt, state.redrive_base, state.pool, state.fallback_index) == (
        4,
        3,
        "gpu-b",
        1,
    )
    assert (state.last_seq, state.updated_at) == (14, at(260))
    assert state.anomalies == ()


# --- bookkeeping --------------------------------------------------------------------------------


def test_last_seq_and_updated_at_advance_on_every_event_even_anomalies() -> None:
    history = queued()
    events: list[JobEvent] = [
        f.heartbeat(at=at(1)),
        f.reserved(at=at(2)),
        f.reserved(at=at(3)),
        f.completed(at=at(4)),
    ]
    for seq, event in enumerate(events, start=2):
        state = history.add(event, recorded_at=at(seq * 10))
        assert (state.last_seq, state.updated_at) == (seq, at(seq * 10))


def test_fold_of_nothing_needs_a_starting_state() -> None:
    with pytest.raises(ValueError, match="fold of no events needs a starting state"):
        fold([])
    start = JobState(job_id=JOB)
    assert fold([], start) is start


def test_fold_continues_from_a_given_state() -> None:
    events = f.record_all([f.submitted(at=at(0)), f.reserved(at=at(1)), f.completed(at=at(2))])
    assert fold(events[1:], fold(events[:1])) == fold(events)


def test_fold_names_the_state_after_the_first_events_job() -> None:
    assert f.fold_events(f.submitted("other-job")).job_id == "other-job"


def test_evolve_rejects_objects_that_are_not_events() -> None:
    bogus = RecordedEvent(1, T0, GENESIS_HASH, GENESIS_HASH, event=_NotAnEvent())  # type: ignore[arg-type]
    with pytest.raises(AssertionError):
        evolve(JobState(job_id=JOB), bogus)


class _NotAnEvent:
    """Has the envelope but is none of the union's types: only a type-checker bypass gets here."""

    occurred_at = T0
    event_id = "x"
    type = "bogus"


# --- lenient reports ----------------------------------------------------------------------------


def test_completion_without_a_reservation_is_accepted_and_flagged() -> None:
    state = queued().add(f.completed(at=at(2)))
    assert state.status is JobStatus.COMPLETED
    assert [(a.kind, a.detail) for a in state.anomalies] == [
        ("not_reserved", "completed while queued")
    ]


def test_failure_without_a_reservation_is_accepted_and_flagged() -> None:
    state = queued().add(f.failed(at=at(2), error_code="oom"))
    assert (state.status, state.last_error_code, state.failures_on_pool) == (
        JobStatus.COOLING_DOWN,
        "oom",
        1,
    )
    assert [(a.kind, a.detail) for a in state.anomalies] == [
        ("not_reserved", "failed while queued")
    ]


def test_completion_after_the_lease_ran_out_is_accepted_and_flagged() -> None:
    history = reserved_job()
    history.add(f.expired(at=at(100)))
    state = history.add(f.completed(at=at(101)))
    assert state.status is JobStatus.COMPLETED
    assert [(a.kind, a.seq) for a in state.anomalies] == [("late_report", 4)]


def test_failure_after_the_lease_ran_out_is_a_duplicate_report() -> None:
    history = reserved_job()
    history.add(f.expired(at=at(100)))
    anomaly = add_anomalous(history, f.failed(at=at(101), error_code="cuda_error"))
    assert anomaly.kind == "duplicate_report"
    assert history.state.last_error_code == LEASE_EXPIRED_CODE


# --- anomalies ----------------------------------------------------------------------------------

NODE_REPORTS: dict[str, Callable[..., JobEvent]] = {
    "reserved": f.reserved,
    "heartbeat": f.heartbeat,
    "completed": f.completed,
    "failed": f.failed,
}

EVERY_TYPE: dict[str, Callable[[], JobEvent]] = {
    "submitted": lambda: f.submitted(at=at(50)),
    "reserved": lambda: f.reserved(at=at(50)),
    "heartbeat": lambda: f.heartbeat(at=at(50)),
    "completed": lambda: f.completed(at=at(50)),
    "failed": lambda: f.failed(at=at(50)),
    "expired_lease": lambda: f.expired(at=at(50), reason=ExpiryReason.LEASE),
    "expired_ttl": lambda: f.expired(at=at(50), reason=ExpiryReason.TTL),
    "retried": lambda: f.retried(at=at(50), attempt=2),
    "rerouted": lambda: f.rerouted(at=at(50), attempt=2),
    "dead_lettered": lambda: f.dead_lettered(at=at(50)),
    "cancelled": lambda: f.cancelled(at=at(50)),
    "redriven": lambda: f.redriven(at=at(50), attempt=2),
}


@pytest.mark.parametrize("name", [name for name in EVERY_TYPE if name != "submitted"])
def test_any_event_of_an_unknown_job_is_an_anomaly(name: str) -> None:
    history = History()
    event = EVERY_TYPE[name]()
    state = history.add(event, recorded_at=at(51))
    assert state.status is None
    assert state.spec is None
    assert (state.last_seq, state.updated_at) == (1, at(51))
    assert len(state.anomalies) == 1
    anomaly = state.anomalies[0]
    assert anomaly == Anomaly(1, str(event.event_id), event.type, "unknown_job", anomaly.detail)
    assert anomaly.detail.startswith("no submission seen (")


def _terminal(status: JobStatus) -> History:
    history = reserved_job()
    finisher: dict[JobStatus, JobEvent] = {
        JobStatus.COMPLETED: f.completed(at=at(5)),
        JobStatus.EXPIRED: f.expired(at=at(5), reason=ExpiryReason.TTL),
        JobStatus.DEAD_LETTERED: f.dead_lettered(at=at(5)),
        JobStatus.CANCELLED: f.cancelled(at=at(5)),
    }
    history.add(finisher[status])
    assert history.state.status is status
    return history


@pytest.mark.parametrize("name", list(EVERY_TYPE))
@pytest.mark.parametrize("status", sorted(TERMINAL))
def test_terminal_states_absorb_every_event(status: JobStatus, name: str) -> None:
    history = _terminal(status)
    event = EVERY_TYPE[name]()
    if name == "redriven" and status is JobStatus.DEAD_LETTERED:
        assert history.add(event).status is JobStatus.QUEUED
        return
    anomaly = add_anomalous(history, event)
    assert anomaly.kind == "after_terminal"
    assert anomaly.detail.startswith(f"job is already {status} (")


@pytest.mark.parametrize("report", list(NODE_REPORTS))
def test_a_report_for_an_older_attempt_is_stale(report: str) -> None:
    history = cooling_job()
    history.add(f.retried(at=at(20), attempt=2))
    history.add(f.reserved(at=at(21), attempt=2))
    anomaly = add_anomalous(history, NODE_REPORTS[report](at=at(22), attempt=1))
    assert (anomaly.kind, anomaly.detail) == ("stale_attempt", f"{report} for attempt 1, current 2")


@pytest.mark.parametrize("report", list(NODE_REPORTS))
def test_a_report_for_a_later_attempt_is_from_the_future(report: str) -> None:
    anomaly = add_anomalous(reserved_job(), NODE_REPORTS[report](at=at(3), attempt=3))
    assert (anomaly.kind, anomaly.detail) == (
        "future_attempt",
        f"{report} for attempt 3, current 1",
    )


@pytest.mark.parametrize("make", [queued, reserved_job, cooling_job])
def test_a_second_submission_is_a_duplicate(make: Callable[[], History]) -> None:
    anomaly = add_anomalous(make(), f.submitted(at=at(5), pool="elsewhere"))
    assert (anomaly.kind, anomaly.detail) == (
        "duplicate_submission",
        "the job was already submitted",
    )


def test_a_second_failure_of_the_same_attempt_is_a_duplicate_report() -> None:
    anomaly = add_anomalous(cooling_job(), f.failed(at=at(5), error_code="other"))
    assert (anomaly.kind, anomaly.detail) == (
        "duplicate_report",
        "failure of an attempt that already ended",
    )


@pytest.mark.parametrize(
    ("make", "event", "detail"),
    [
        (
            reserved_job,
            lambda: f.reserved(at=at(5), node_id=OTHER_NODE),
            "reservation while reserved",
        ),
        (cooling_job, lambda: f.reserved(at=at(5)), "reservation while cooling_down"),
        (queued, lambda: f.heartbeat(at=at(5)), "heartbeat while queued"),
        (cooling_job, lambda: f.heartbeat(at=at(5)), "heartbeat while cooling_down"),
        (
            reserved_job,
            lambda: f.heartbeat(at=at(5), node_id=OTHER_NODE),
            f"heartbeat from {OTHER_NODE}, reserved by {NODE}",
        ),
        (queued, lambda: f.expired(at=at(5)), "lease expiry of attempt 1 while queued"),
        (cooling_job, lambda: f.expired(at=at(5)), "lease expiry of attempt 1 while cooling_down"),
        (
            reserved_job,
            lambda: f.expired(at=at(5), attempt=2),
            "lease expiry of attempt 2 while reserved",
        ),
        (queued, lambda: f.retried(at=at(5), attempt=2), "retried while queued"),
        (reserved_job, lambda: f.rerouted(at=at(5), attempt=2), "rerouted while reserved"),
        (
            cooling_job,
            lambda: f.retried(at=at(5), attempt=1),
            "retried to attempt 1 after attempt 1",
        ),
        (
            cooling_job,
            lambda: f.rerouted(at=at(5), attempt=3),
            "rerouted to attempt 3 after attempt 1",
        ),
        (queued, lambda: f.redriven(at=at(5), attempt=2), "redriven while queued"),
        (cooling_job, lambda: f.redriven(at=at(5), attempt=2), "redriven while cooling_down"),
    ],
)
def test_events_that_make_no_sense_in_a_live_state_are_unexpected(
    make: Callable[[], History], event: Callable[[], JobEvent], detail: str
) -> None:
    anomaly = add_anomalous(make(), event())
    assert (anomaly.kind, anomaly.detail) == ("unexpected", detail)


def test_a_redrive_to_the_wrong_attempt_stays_dead() -> None:
    anomaly = add_anomalous(dead_job(), f.redriven(at=at(5), attempt=5))
    assert anomaly.kind == "after_terminal"
    assert anomaly.detail == "job is already dead_lettered (redriven to attempt 5 after attempt 1)"


# --- clock skew and lag -------------------------------------------------------------------------
# Only an occurred_at AHEAD of recorded_at (Jobtrail's clock) beyond the tolerance proves a bad
# clock. An event recorded long after it occurred is lag (a backlog, an outage): no anomaly.

BACKLOG = timedelta(minutes=10)
"""A backlog twice the default tolerance: every event recorded this long after it occurred."""


def test_an_event_dated_ahead_beyond_the_tolerance_is_flagged_but_applies() -> None:
    history = queued()
    ahead = DEFAULT_SKEW_TOLERANCE + timedelta(microseconds=1)
    state = history.add(f.reserved(at=at(1000) + ahead), recorded_at=at(1000))
    assert state.status is JobStatus.RESERVED
    assert state.lease_from == at(1000)  # deadlines follow recorded_at, never the producer clock
    assert [(a.kind, a.seq) for a in state.anomalies] == [("clock_skew", 2)]
    assert state.anomalies[0].detail == "occurred_at is 0:05:00.000001 ahead of recorded_at"


@pytest.mark.parametrize(
    "late",
    [DEFAULT_SKEW_TOLERANCE + timedelta(microseconds=1), BACKLOG, timedelta(days=3)],
    ids=["just_past_the_tolerance", "a_10_minute_backlog", "a_3_day_outage"],
)
def test_an_event_recorded_late_is_lag_not_skew(late: timedelta) -> None:
    history = queued()
    state = history.add(f.reserved(at=at(1000) - late), recorded_at=at(1000))
    assert state.status is JobStatus.RESERVED
    assert state.lease_from == at(1000)
    assert state.anomalies == ()


def test_ahead_by_exactly_the_tolerance_is_fine() -> None:
    history = queued()
    state = history.add(f.reserved(at=at(1000) + DEFAULT_SKEW_TOLERANCE), recorded_at=at(1000))
    assert state.anomalies == ()
    assert timedelta(minutes=5) == DEFAULT_SKEW_TOLERANCE


def test_the_skew_tolerance_is_a_parameter() -> None:
    events = [f.recorded(f.submitted(at=at(10)), 1, at(0))]
    assert fold(events, skew_tolerance=timedelta(seconds=10)).anomalies == ()
    assert [a.kind for a in fold(events, skew_tolerance=timedelta(seconds=9)).anomalies] == [
        "clock_skew"
    ]
    state = JobState(job_id=JOB)
    assert evolve(state, events[0], timedelta(seconds=9)).anomalies[0].kind == "clock_skew"
    late = [f.recorded(f.submitted(at=at(0)), 1, at(10))]
    assert fold(late, skew_tolerance=timedelta(0)).anomalies == ()


def test_skew_and_a_second_anomaly_are_both_kept() -> None:
    history = cooling_job()
    state = history.add(f.heartbeat(at=at(3600)), recorded_at=at(3))
    assert [a.kind for a in state.anomalies] == ["clock_skew", "unexpected"]
    assert state.status is JobStatus.COOLING_DOWN


def test_skew_on_a_lenient_report_is_flagged_twice() -> None:
    state = queued().add(f.completed(at=at(3600)), recorded_at=at(1))
    assert [a.kind for a in state.anomalies] == ["clock_skew", "not_reserved"]
    assert state.status is JobStatus.COMPLETED


def test_a_reservation_recorded_late_leases_from_when_it_was_recorded() -> None:
    """A 60 s lease on a reservation that waited 10 minutes in a backlog: had the lease counted
    from occurred_at it would be over before Jobtrail even learnt of the reservation."""
    history = queued()
    state = history.add(f.reserved(at=at(10), lease_seconds=60), recorded_at=at(10) + BACKLOG)
    deadline = next_deadline(state, SMALL_POLICY)
    assert deadline == Deadline(at(10) + BACKLOG + timedelta(seconds=60), "lease")
    assert decide(state, at(10) + BACKLOG, SMALL_POLICY) == ()
    assert state.anomalies == ()


def test_a_heartbeat_recorded_late_extends_the_lease_from_its_recording() -> None:
    history = queued()
    history.add(f.reserved(at=at(10), lease_seconds=60), recorded_at=at(10) + BACKLOG)
    recorded_at = at(50) + BACKLOG
    state = history.add(f.heartbeat(at=at(50)), recorded_at=recorded_at)
    assert state.lease_from == recorded_at
    assert decide(state, recorded_at, SMALL_POLICY) == (), "not already expired"
    assert next_deadline(state, SMALL_POLICY) == Deadline(
        recorded_at + timedelta(seconds=60), "lease"
    )


def test_a_history_recorded_behind_a_backlog_keeps_its_spacing_and_flags_nothing() -> None:
    """Every event 10 minutes late: the TTL, the lease and the cooldown all run on recorded_at,
    so each deadline lies as far after its event's recording as it would have without the lag."""
    history = History()
    steps = [
        f.submitted(at=at(0)),
        f.reserved(at=at(5)),
        f.heartbeat(at=at(30)),
        f.failed(at=at(40)),
    ]
    for event in steps:
        state = history.add(event, recorded_at=event.occurred_at + BACKLOG)
    prompt = History()
    prompt.extend(steps)
    assert state.anomalies == ()
    assert (state.ttl_from, state.cooling_since) == (at(0) + BACKLOG, at(40) + BACKLOG)
    lagged, on_time = next_deadline(state, SMALL_POLICY), next_deadline(prompt.state, SMALL_POLICY)
    assert lagged is not None and on_time is not None
    assert (lagged.at - on_time.at, lagged.kind) == (BACKLOG, on_time.kind)
    assert decide(state, at(40) + BACKLOG, SMALL_POLICY) == (), "the retry is not already due"


def test_the_ttl_clock_starts_when_the_submission_was_recorded() -> None:
    state = fold([f.recorded(f.submitted(at=at(-3599)), 1, at(0))])
    assert state.submitted_at == at(0)

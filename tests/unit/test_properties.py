"""Property tests of the pure core: a Hypothesis state machine of one job's life, and folds of noise.

The machine plays the Cloud, the nodes, the broker and an operator (plausible and implausible
events alike), lets time pass, and appends whatever ``decide`` returns, checking the invariants
after every step (attempts within the budget, deadlines that agree with ``decide``, no republish
before the cooldown ends, the state is the fold of the log) and the replay guarantee at the end.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import event as count_in_statistics
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from app.domain.chain import GENESIS_HASH, RecordedEvent
from app.domain.decide import cooldown, decide, next_deadline
from app.domain.events import (
    DeadLetterReason,
    ExpiryReason,
    JobEvent,
    Redriven,
    Rerouted,
    Retried,
    RetryOverride,
    Submitted,
    canonical_json,
)
from app.domain.machine import evolve, fold
from app.domain.state import JobState, JobStatus
from tests.unit import factories as f
from tests.unit.factories import JOB, NODE, OTHER_NODE, T0

POLICY = f.small_policy()
SKEW = POLICY.clock_skew_tolerance
TICK = timedelta(microseconds=1)
KINDS = frozenset(
    {
        "unknown_job",
        "after_terminal",
        "stale_attempt",
        "future_attempt",
        "duplicate_submission",
        "duplicate_report",
        "not_reserved",
        "late_report",
        "clock_skew",
        "unexpected",
    }
)
LENIENT = frozenset({"clock_skew", "not_reserved", "late_report"})
"""Anomalies that flag an event without refusing it."""

DEADLINE_KINDS = {
    JobStatus.QUEUED: {"ttl"},
    JobStatus.RESERVED: {"lease"},
    JobStatus.COOLING_DOWN: {"ttl", "cooldown", "now"},
}

FAST = settings(
    max_examples=200,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

NODE_REPORTS = ["reserved", "heartbeat", "completed", "failed"]
NATURAL_REPORTS: dict[JobStatus | None, list[str]] = {
    JobStatus.QUEUED: ["reserved"],
    JobStatus.RESERVED: ["heartbeat"] * 3 + ["failed"] * 6 + ["completed"],
}
DISTURBANCES = [
    *["redriven"] * 4,
    *["lease"] * 3,
    *["submitted"] * 2,
    "ttl",
    "dead_lettered",
    "cancelled",
    "retried",
    "rerouted",
]

attempt_deltas = st.sampled_from([0, 0, 0, 0, 0, -1, 1, 2])
skews = st.sampled_from([0, 0, 0, 0, 3, -3, 299, 301, -301, 3600]).map(
    lambda s: timedelta(seconds=s)
)
time_steps = st.one_of(
    st.integers(min_value=0, max_value=20).map(lambda s: timedelta(seconds=s)),
    st.integers(min_value=0, max_value=10**6).map(lambda us: timedelta(microseconds=us)),
    st.integers(min_value=0, max_value=200).map(lambda s: timedelta(seconds=s)),
    st.integers(min_value=0, max_value=1200).map(lambda s: timedelta(seconds=s)),
)


def only_bookkeeping_changed(before: JobState, after: JobState) -> bool:
    """True if ``after`` differs from ``before`` in nothing but anomalies, last_seq and updated_at."""
    return (
        replace(
            after,
            anomalies=before.anomalies,
            last_seq=before.last_seq,
            updated_at=before.updated_at,
        )
        == before
    )


def flagged_skew(state: JobState, entry: RecordedEvent) -> bool:
    """Whether ``entry`` was flagged ``clock_skew`` (only an occurred_at ahead of the clock is)."""
    return any(a.seq == entry.seq and a.kind == "clock_skew" for a in state.anomalies)


def without_skew(state: JobState) -> JobState:
    return replace(state, anomalies=tuple(a for a in state.anomalies if a.kind != "clock_skew"))


def cooldown_end(state: JobState) -> datetime:
    assert state.spec is not None and state.cooling_since is not None
    rules = POLICY.for_job(state.spec)
    failures = state.attempt - state.redrive_base
    return state.cooling_since + cooldown(
        rules.retry, failures, state.job_id, state.attempt, POLICY.jitter
    )


def check_deadline_agrees_with_decide(state: JobState, now: datetime) -> None:
    """decide says nothing strictly before next_deadline and something at it, for live states."""
    deadline = next_deadline(state, POLICY)
    if state.status is None or state.is_terminal:
        assert deadline is None
        assert decide(state, now, POLICY) == ()
        return
    assert deadline is not None
    assert deadline.kind in DEADLINE_KINDS[state.status]
    assert decide(state, deadline.at, POLICY) != ()
    if deadline.kind == "now":
        assert state.updated_at is not None
        assert deadline.at <= state.updated_at
        assert decide(state, now, POLICY) != ()
    else:
        assert decide(state, deadline.at - TICK, POLICY) == ()


def check_no_republish_before_cooldown(state: JobState, now: datetime) -> None:
    if state.status is not JobStatus.COOLING_DOWN:
        return
    end = cooldown_end(state)
    assert state.cooling_since is not None
    moments = [
        state.cooling_since,
        end - TICK,
        state.cooling_since + (end - state.cooling_since) / 2,
    ]
    if now < end:
        moments.append(now)
    for moment in moments:
        assert not any(isinstance(e, Retried | Rerouted) for e in decide(state, moment, POLICY))


class JobLifecycle(RuleBasedStateMachine):
    """One job, the actors around it, a clock, and Jobtrail deciding along the way."""

    def __init__(self) -> None:
        super().__init__()
        self.now = T0
        self.entries: list[RecordedEvent] = []
        self.derived: list[int] = []
        self.state = JobState(job_id=JOB)

    # --- appending --------------------------------------------------------------------------

    def append(self, event: JobEvent, *, derived: bool = False) -> JobState:
        before = self.state
        entry = RecordedEvent(len(self.entries) + 1, self.now, GENESIS_HASH, GENESIS_HASH, event)
        after = evolve(before, entry, SKEW)
        assert (after.last_seq, after.updated_at) == (entry.seq, self.now)
        assert after.anomalies[: len(before.anomalies)] == before.anomalies
        new = after.anomalies[len(before.anomalies) :]
        assert {a.kind for a in new} <= KINDS
        assert all(a.seq == entry.seq and a.event_id == str(event.event_id) for a in new)
        assert flagged_skew(after, entry) == (event.occurred_at - entry.recorded_at > SKEW)
        if any(a.kind not in LENIENT for a in new):
            assert only_bookkeeping_changed(before, after), new
        if before.is_terminal:
            redrive = isinstance(event, Redriven) and before.status is JobStatus.DEAD_LETTERED
            if not (redrive and after.status is JobStatus.QUEUED):
                assert only_bookkeeping_changed(before, after)
                assert any(a.kind == "after_terminal" for a in new)
        if derived:
            self.derived.append(len(self.entries))
        self.entries.append(entry)
        self.state = after
        return after

    def at(self, skew: timedelta = timedelta(0)) -> datetime:
        return self.now + skew

    # --- the Cloud, the nodes, the broker and an operator --------------------------------

    @initialize(submission=f.lifecycle_submissions(), first=st.sampled_from([True] * 7 + [False]))
    def start(self, submission: Submitted, first: bool) -> None:
        if first:
            self.append(submission)

    @rule(
        plausible=st.sampled_from([True, True, True, True, False]),
        pick=st.integers(min_value=0, max_value=9),
        kind=st.sampled_from(NODE_REPORTS),
        delta=attempt_deltas,
        same_node=st.sampled_from([True, True, True, False]),
        error_code=f.error_codes,
        retryable=st.sampled_from([True, True, True, True, False]),
        lease=st.none() | st.floats(min_value=5, max_value=600),
        skew=skews,
    )
    def node_report(
        self,
        plausible: bool,
        pick: int,
        kind: str,
        delta: int,
        same_node: bool,
        error_code: str,
        retryable: bool,
        lease: float | None,
        skew: timedelta,
    ) -> None:
        """A node's report: usually the natural next one for the state, sometimes anything."""
        natural = NATURAL_REPORTS.get(self.state.status)
        if plausible and natural is not None:
            kind, delta, same_node = natural[pick % len(natural)], 0, True
        node = (self.state.node_id or NODE) if same_node else OTHER_NODE
        attempt = max(1, self.state.attempt + delta)
        at = self.at(skew)
        event: JobEvent
        if kind == "reserved":
            event = f.reserved(at=at, attempt=attempt, node_id=node, lease_seconds=lease)
        elif kind == "heartbeat":
            event = f.heartbeat(at=at, attempt=attempt, node_id=node)
        elif kind == "completed":
            event = f.completed(at=at, attempt=attempt, node_id=node)
        else:
            event = f.failed(
                at=at, attempt=attempt, node_id=node, error_code=error_code, retryable=retryable
            )
        self.append(event)

    @rule(
        kind=st.sampled_from(DISTURBANCES),
        delta=attempt_deltas,
        submission=f.lifecycle_submissions(),
        pool=f.names,
        reason=st.sampled_from(DeadLetterReason),
        skew=skews,
    )
    def disturbance(
        self,
        kind: str,
        delta: int,
        submission: Submitted,
        pool: str,
        reason: DeadLetterReason,
        skew: timedelta,
    ) -> None:
        """Everything but node reports: the Cloud, the broker, an operator, a foreign retry."""
        attempt = max(1, self.state.attempt + delta)
        if kind == "submitted":
            self.append(submission.model_copy(update={"occurred_at": self.at(skew)}))
        elif kind == "cancelled":
            self.append(f.cancelled(at=self.at(skew), attempt=attempt))
        elif kind in {"lease", "ttl"}:
            self.append(f.expired(at=self.now, attempt=attempt, reason=ExpiryReason(kind)))
        elif kind == "dead_lettered":
            self.append(f.dead_lettered(at=self.now, attempt=attempt, reason=reason))
        elif kind == "redriven":
            self.append(f.redriven(at=self.now, attempt=attempt + 1, pool=pool, queue=f"q.{pool}"))
        else:
            self.foreign_republish(kind, delta, pool)

    def foreign_republish(self, kind: str, delta: int, pool: str) -> None:
        """A retry Jobtrail did not decide, always in a shape evolve must refuse."""
        if self.state.status is JobStatus.COOLING_DOWN and delta == 1:
            delta = 2
        attempt = max(1, self.state.attempt + delta)
        build = f.retried if kind == "retried" else f.rerouted
        before = len(self.state.anomalies)
        after = self.append(build(at=self.now, attempt=attempt, pool=pool))
        assert any(a.kind not in LENIENT for a in after.anomalies[before:])

    # --- time and Jobtrail ------------------------------------------------------------------

    @rule(step=time_steps)
    def wait(self, step: timedelta) -> None:
        self.now += step

    @rule(
        timer=st.sampled_from(
            ["now", "now", "deadline", "deadline", "late", "tick", "any_deadline"]
        )
    )
    def jobtrail_decides(self, timer: str) -> None:
        """Jobtrail decides now, or when a timer fires: at (or just after) the next deadline."""
        deadline = next_deadline(self.state, POLICY)
        if (
            timer != "now"
            and deadline is not None
            and (deadline.kind != "ttl" or timer == "any_deadline")
        ):
            late = {"late": timedelta(seconds=7), "tick": TICK}.get(timer, timedelta(0))
            self.now = max(self.now, deadline.at + late)
        events = decide(self.state, self.now, POLICY)
        assert len(events) <= 1
        for decided in events:
            self.append(decided, derived=True)
            assert decide(self.state, self.now, POLICY) != events  # a decision is acted on once

    @precondition(lambda self: bool(self.entries) and self.entries[-1].recorded_at == self.now)
    @rule()
    def resend_last(self) -> None:
        """The same report again, with a new event id, at the same instant: only bookkeeping moves."""
        before = self.state
        after = self.append(f.with_new_id(self.entries[-1].event))
        assert only_bookkeeping_changed(before, after)

    # --- invariants -------------------------------------------------------------------------

    @invariant()
    def attempts_stay_within_the_budget(self) -> None:
        if self.state.spec is not None:
            rules = POLICY.for_job(self.state.spec)
            assert 1 <= self.state.attempt - self.state.redrive_base <= rules.max_attempts

    @invariant()
    def decisions_agree_with_the_deadline(self) -> None:
        check_deadline_agrees_with_decide(self.state, self.now)

    @invariant()
    def no_republish_before_the_cooldown_ends(self) -> None:
        check_no_republish_before_cooldown(self.state, self.now)

    @invariant()
    def the_state_is_the_fold_of_the_log(self) -> None:
        if self.entries:
            assert fold(self.entries, skew_tolerance=SKEW) == self.state

    def teardown(self) -> None:
        self.check_prefix_folds()
        self.check_replay()
        count_in_statistics(f"final status: {self.state.status}")
        for index in self.derived:
            decided = self.entries[index].event
            count_in_statistics(
                f"decided: {decided.type} {getattr(decided, 'reason', '')}".rstrip()
            )
        for kind in {a.kind for a in self.state.anomalies}:
            count_in_statistics(f"anomaly: {kind}")

    def check_prefix_folds(self) -> None:
        for cut in range(len(self.entries) + 1):
            head = fold(self.entries[:cut], JobState(job_id=JOB), SKEW)
            assert fold(self.entries[cut:], head, SKEW) == self.state

    def check_replay(self) -> None:
        """Re-deciding each derived event on the fold before it yields exactly that event."""
        for index in self.derived:
            event = self.entries[index].event
            before = fold(self.entries[:index], JobState(job_id=JOB), SKEW)
            again = decide(before, event.occurred_at, POLICY)
            assert again == (event,)
            assert canonical_json(again[0]) == canonical_json(event)


JobLifecycle.TestCase.settings = FAST
TestJobLifecycle = JobLifecycle.TestCase


# --- folds of arbitrary valid events --------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(f.recorded_histories())
def test_evolve_never_raises_and_every_anomaly_changes_nothing(
    entries: list[RecordedEvent],
) -> None:
    state = JobState(job_id=JOB)
    for entry in entries:
        before, state = state, evolve(state, entry)
        new = state.anomalies[len(before.anomalies) :]
        assert {a.kind for a in new} <= KINDS
        if any(a.kind not in LENIENT for a in new):
            assert only_bookkeeping_changed(before, state)
        assert (state.last_seq, state.updated_at) == (entry.seq, entry.recorded_at)
        check_deadline_agrees_with_decide(state, entry.recorded_at)
        check_no_republish_before_cooldown(state, entry.recorded_at)


@settings(max_examples=200, deadline=None)
@given(f.recorded_histories(), st.data())
def test_the_producer_clock_moves_no_deadline_and_only_an_early_clock_is_flagged(
    entries: list[RecordedEvent], data: st.DataObject
) -> None:
    """Re-date every event's occurred_at at will (a backlog, an outage, clocks off either way):
    the fold is the same but for clock_skew anomalies, so every deadline and decision is too;
    and exactly the events dated ahead of their recording beyond the tolerance are flagged."""
    shifts = st.integers(min_value=-(10**6), max_value=10**5).map(lambda s: timedelta(seconds=s))
    redated = [
        replace(
            e, event=e.event.model_copy(update={"occurred_at": e.recorded_at + data.draw(shifts)})
        )
        for e in entries
    ]
    state, moved = (
        fold(entries, JobState(job_id=JOB), SKEW),
        fold(redated, JobState(job_id=JOB), SKEW),
    )
    assert without_skew(moved) == without_skew(state)
    for entry in redated:
        ahead = entry.event.occurred_at - entry.recorded_at
        assert flagged_skew(moved, entry) == (ahead > SKEW)
    if state.updated_at is not None:
        assert decide(moved, state.updated_at, POLICY) == decide(state, state.updated_at, POLICY)
        assert next_deadline(moved, POLICY) == next_deadline(state, POLICY)


@settings(max_examples=200, deadline=None)
@given(f.recorded_histories(), st.data())
def test_fold_of_a_prefix_then_the_rest_is_the_fold_of_the_whole(
    entries: list[RecordedEvent], data: st.DataObject
) -> None:
    cut = data.draw(st.integers(min_value=0, max_value=len(entries)))
    start = JobState(job_id=JOB)
    assert fold(entries[cut:], fold(entries[:cut], start)) == fold(entries, start)


@settings(max_examples=200, deadline=None)
@given(f.recorded_histories(min_size=1), st.data())
def test_a_resent_event_changes_only_bookkeeping(
    entries: list[RecordedEvent], data: st.DataObject
) -> None:
    index = data.draw(st.integers(min_value=0, max_value=len(entries) - 1))
    state = fold(entries[: index + 1], JobState(job_id=JOB))
    original = entries[index]
    again = RecordedEvent(
        original.seq + 1, original.recorded_at, "", "", f.with_new_id(original.event)
    )
    assert only_bookkeeping_changed(state, evolve(state, again))


@settings(max_examples=100, deadline=None)
@given(f.submitted_events(), st.integers(min_value=1, max_value=12), st.data())
def test_no_override_of_a_submission_brings_a_retry_before_its_cooldown(
    submission: Submitted, failures: int, data: st.DataObject
) -> None:
    """Whatever a job's own retry settings, decide republishes no earlier than the cooldown's end."""
    history, clock = f.History(), T0
    history.add(submission, clock)
    for _ in range(failures):
        attempt = history.state.attempt
        history.add(f.reserved(at=clock, attempt=attempt))
        state = history.add(f.failed(at=clock + timedelta(seconds=1), attempt=attempt))
        assert state.cooling_since is not None
        end = cooldown_end(state)
        share = data.draw(st.floats(min_value=0, max_value=1, exclude_max=True))
        early = state.cooling_since + (end - state.cooling_since) * share
        for moment in (early, end - TICK):
            decided = decide(state, min(moment, end - TICK), POLICY)
            assert not any(isinstance(e, Retried | Rerouted) for e in decided)
        decided = decide(state, end, POLICY)
        if not decided or not isinstance(decided[0], Retried | Rerouted):
            return  # given up or expired: nothing left to retry
        history.add(decided[0])
        clock = end + timedelta(seconds=1)


@settings(max_examples=200, deadline=None)
@given(
    ttl=st.floats(min_value=5, max_value=900),
    initial=st.floats(min_value=0.5, max_value=600),
    coefficient=st.floats(min_value=1, max_value=4),
    maximum=st.floats(min_value=0.5, max_value=900),
    failed_after=st.floats(min_value=0, max_value=1000),
    retryable=st.booleans(),
    later=st.floats(min_value=0, max_value=2000),
)
def test_a_cooling_job_is_given_up_expired_retried_or_left_alone_in_that_order(
    ttl: float,
    initial: float,
    coefficient: float,
    maximum: float,
    failed_after: float,
    retryable: bool,
    later: float,
) -> None:
    """An independent statement of decide's rule for a cooling job, checked at any instant."""
    retry = RetryOverride(
        initial_interval_seconds=initial,
        backoff_coefficient=coefficient,
        max_interval_seconds=maximum,
    )
    history = f.History()
    history.add(f.submitted(at=T0, ttl_seconds=ttl, retry=retry, max_attempts=10))
    history.add(f.reserved(at=T0))
    failed_at = T0 + timedelta(seconds=failed_after)
    state = history.add(f.failed(at=failed_at, retryable=retryable))
    now = failed_at + timedelta(seconds=later)
    ttl_at, end = T0 + timedelta(seconds=ttl), cooldown_end(state)
    decided = [event.type for event in decide(state, now, POLICY)]
    if not retryable:
        assert decided == ["dead_lettered"]
    elif now >= ttl_at:
        assert decided == ["expired"]
    elif now >= end:
        assert decided == ["retried"]
    else:
        assert decided == []
    check_deadline_agrees_with_decide(state, now)
    check_no_republish_before_cooldown(state, now)

"""What if: replay real history under another policy, side by side with what really happened.

Only Jobtrail's own decisions (``expired``, ``routed``, ``retried``, ``rerouted``,
``dead_lettered`` from source ``jobtrail``) are re-derived: a routing plugin's recorded answer
does not decide the replay, the simulated policy's plugin (or none) answers instead. Every
other event (submissions, node reports, broker signals, operator actions) is replayed at the
instant it was recorded, as the real tracker saw it. Between those instants the simulation fires
each deadline ``decide`` would hit exactly when it falls due (an ideal timer loop), and after
each batch of inputs it decides at the batch's instant, as the tracker does. A node report for
an attempt that no longer exists under the other policy stays an anomaly of the replayed job:
nodes are not simulated. Pure and deterministic.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from app.domain.chain import RecordedEvent
from app.domain.decide import JOBTRAIL_SOURCE, next_deadline
from app.domain.events import (
    DERIVED_TYPES,
    Completed,
    Expired,
    ExpiryReason,
    JobEvent,
    Rerouted,
    Retried,
    Routed,
)
from app.domain.machine import evolve
from app.domain.policy import Policy
from app.domain.state import JobState, JobStatus
from app.ports import EventLog
from app.services.rebuild import job_histories
from app.services.routing import FleetWindow, Router, decide_routed
from app.services.tracking import MAX_DECISIONS_PER_SETTLE

MAX_TIMER_STEPS = 10_000
"""A bound on deadlines fired for one job between two inputs (a policy always makes progress)."""
DEFAULT_EXAMPLES = 10
_NO_HASH = ""

Transition = tuple[JobState, JobState, RecordedEvent]
"""The state before an event, the state after it, and the event."""


def is_decision(event: JobEvent) -> bool:
    """Whether Jobtrail itself decided this event (the part a what-if replay re-derives)."""
    return event.source == JOBTRAIL_SOURCE and event.type in DERIVED_TYPES


def input_batches(history: Sequence[RecordedEvent]) -> list[list[RecordedEvent]]:
    """The job's inputs grouped as the tracker received them: same instant, no decision between."""
    batches: list[list[RecordedEvent]] = []
    current: list[RecordedEvent] = []
    for recorded in history:
        decided = is_decision(recorded.event)
        if current and (decided or recorded.recorded_at != current[0].recorded_at):
            batches.append(current)
            current = []
        if not decided:
            current.append(recorded)
    if current:
        batches.append(current)
    return batches


def _to_ms(moment: datetime) -> datetime:
    """The instant as the log stores it: UTC, whole milliseconds."""
    utc = moment.astimezone(UTC)
    return utc.replace(microsecond=utc.microsecond - utc.microsecond % 1000)


class _Replay:
    """One job's simulated log: inputs and decisions, folded as they are appended."""

    def __init__(self, job_id: str, policy: Policy, router: Router | None = None) -> None:
        self.policy = policy
        self.router = router
        self.state = JobState(job_id=job_id)
        self.events: list[RecordedEvent] = []
        self.clock: datetime | None = None
        self.transitions: list[Transition] = []
        self._ids: set[str] = set()

    def record(self, events: Sequence[JobEvent], at: datetime) -> int:
        """Append events not seen before (the log is idempotent on event_id); count them."""
        added = 0
        for event in events:
            if str(event.event_id) in self._ids:
                continue
            self._ids.add(str(event.event_id))
            entry = RecordedEvent(len(self.events) + 1, at, _NO_HASH, _NO_HASH, event)
            self.events.append(entry)
            before, self.state = (
                self.state,
                evolve(self.state, entry, self.policy.clock_skew_tolerance),
            )
            self.transitions.append((before, self.state, entry))
            added += 1
        return added

    def settle(self, now: datetime) -> None:
        """Decide at ``now`` until nothing more is due, as ``Tracker.settle`` does."""
        self.clock = now if self.clock is None else max(self.clock, now)
        for _ in range(MAX_DECISIONS_PER_SETTLE):
            decided = decide_routed(self.state, now, self.policy, self.router)
            if not decided or not self.record(decided, _to_ms(now)):
                return

    def run_timers(self, until: datetime, *, inclusive: bool) -> None:
        """Fire every deadline before ``until`` (or at it, if ``inclusive``), each when due."""
        for _ in range(MAX_TIMER_STEPS):
            deadline = next_deadline(self.state, self.policy)
            if deadline is None:
                return
            at = deadline.at if self.clock is None else max(deadline.at, self.clock)
            if at > until or (at == until and not inclusive):
                return
            before = len(self.events)
            self.settle(at)
            if len(self.events) == before:
                return


def simulate(
    history: Sequence[RecordedEvent],
    policy: Policy,
    as_of: datetime,
    router: Router | None = None,
) -> list[RecordedEvent]:
    """The job's log as the tracker would have written it under ``policy`` (and the routing
    plugins of ``router``), up to ``as_of``."""
    return _simulate(history, policy, as_of, router).events


def _simulate(
    history: Sequence[RecordedEvent],
    policy: Policy,
    as_of: datetime,
    router: Router | None = None,
) -> _Replay:
    replay = _Replay(history[0].job_id, policy, router)
    for batch in input_batches(history):
        at = batch[0].recorded_at
        if at > as_of:
            break
        replay.run_timers(at, inclusive=False)
        replay.record([recorded.event for recorded in batch], at)
        replay.settle(at)
    replay.run_timers(as_of, inclusive=True)
    return replay


@dataclass
class Tally:
    """What a set of histories adds up to."""

    jobs: int = 0
    completed: int = 0
    dead_lettered: int = 0
    expired: int = 0
    cancelled: int = 0
    live: int = 0
    jobs_retried: int = 0
    retried: int = 0
    rerouted: int = 0
    lease_expiries: int = 0
    cooldown_seconds: float = 0.0
    anomalies: int = 0
    completion_seconds: float = 0.0
    """Submission to completion, added up over the completed jobs."""
    dead_letter_reasons: Counter[str] = field(default_factory=Counter)
    attempts_by_pool: Counter[str] = field(default_factory=Counter)
    """Attempts queued on each pool (the load the decisions put on the pools)."""

    def add(self, other: Tally) -> None:
        """Add ``other``'s counts to this tally."""
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def as_dict(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["cooldown_seconds"] = round(self.cooldown_seconds, 3)
        data["completion_seconds"] = round(self.completion_seconds, 3)
        data["mean_completion_seconds"] = (
            round(self.completion_seconds / self.completed, 3) if self.completed else None
        )
        data["dead_letter_reasons"] = dict(self.dead_letter_reasons.most_common())
        data["attempts_by_pool"] = dict(sorted(self.attempts_by_pool.items()))
        return data


_FINAL = {
    JobStatus.COMPLETED: "completed",
    JobStatus.DEAD_LETTERED: "dead_lettered",
    JobStatus.EXPIRED: "expired",
    JobStatus.CANCELLED: "cancelled",
}


def tally(history: Sequence[RecordedEvent], policy: Policy, as_of: datetime) -> Tally:
    """One job's counts; cooldown still running at ``as_of`` counts up to ``as_of``."""
    return _tally(_transitions(history, policy), as_of)[0]


def _transitions(history: Sequence[RecordedEvent], policy: Policy) -> Iterator[Transition]:
    state = JobState(job_id=history[0].job_id)
    for recorded in history:
        before, state = state, evolve(state, recorded, policy.clock_skew_tolerance)
        yield before, state, recorded


def _tally(transitions: Iterable[Transition], as_of: datetime) -> tuple[Tally, JobState]:
    result = Tally(jobs=1)
    state: JobState | None = None
    for before, state, recorded in transitions:
        _count(result, before, state, recorded)
    assert state is not None, "a history has at least one event"
    if state.status is JobStatus.COOLING_DOWN and state.cooling_since is not None:
        result.cooldown_seconds += max((as_of - state.cooling_since).total_seconds(), 0.0)
    final = _FINAL.get(state.status) if state.status is not None else None
    if final is None:
        result.live = 1
    else:
        setattr(result, final, 1)
    if state.status is JobStatus.DEAD_LETTERED:
        result.dead_letter_reasons[state.terminal_reason or "?"] += 1
    result.jobs_retried = int(result.retried + result.rerouted > 0)
    result.anomalies = len(state.anomalies)
    return result, state


def _count(result: Tally, before: JobState, after: JobState, recorded: RecordedEvent) -> None:
    event = recorded.event
    _count_load(result, before, after, recorded)
    if before.status is JobStatus.COOLING_DOWN and after.status is not JobStatus.COOLING_DOWN:
        assert before.cooling_since is not None
        result.cooldown_seconds += (recorded.recorded_at - before.cooling_since).total_seconds()
        if after.status is JobStatus.QUEUED:
            result.retried += isinstance(event, Retried)
            result.rerouted += isinstance(event, Rerouted)
    if (
        isinstance(event, Expired)
        and event.reason is ExpiryReason.LEASE
        and after.status is JobStatus.COOLING_DOWN
        and before.status is JobStatus.RESERVED
    ):
        result.lease_expiries += 1


def _count_load(result: Tally, before: JobState, after: JobState, recorded: RecordedEvent) -> None:
    """An attempt queued on a pool; a completion's time since submission."""
    if after.status is JobStatus.QUEUED and after.attempt != before.attempt and after.pool:
        result.attempts_by_pool[after.pool] += 1
    done = after.status is JobStatus.COMPLETED and before.status is not JobStatus.COMPLETED
    if done and isinstance(recorded.event, Completed) and after.submitted_at is not None:
        result.completion_seconds += (recorded.recorded_at - after.submitted_at).total_seconds()


@dataclass(frozen=True, slots=True)
class JobChange:
    """A job whose decisions or final state differ under the other policy."""

    job_id: str
    real_status: str | None
    simulated_status: str | None
    real_decisions: tuple[str, ...]
    simulated_decisions: tuple[str, ...]


@dataclass
class WhatIfReport:
    """Real history and its replay under another policy, side by side."""

    as_of: datetime
    real: Tally = field(default_factory=Tally)
    simulated: Tally = field(default_factory=Tally)
    jobs_changed: int = 0
    examples: list[JobChange] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "as_of": self.as_of.isoformat(),
            "real": self.real.as_dict(),
            "simulated": self.simulated.as_dict(),
            "jobs_changed": self.jobs_changed,
            "examples": [
                {
                    "job_id": c.job_id,
                    "real_status": c.real_status,
                    "simulated_status": c.simulated_status,
                    "real_decisions": list(c.real_decisions),
                    "simulated_decisions": list(c.simulated_decisions),
                }
                for c in self.examples
            ],
        }


def decisions(history: Sequence[RecordedEvent]) -> tuple[str, ...]:
    """The job's decisions as ``type#attempt[:reason]`` labels, in order. A routing plugin's
    answer (``routed``) is left out: what it decided shows in the republish after it, so a
    plugin that decides as the policy did changes nothing."""
    labels = []
    for recorded in history:
        event = recorded.event
        if is_decision(event) and not isinstance(event, Routed):
            reason = getattr(event, "reason", None) or getattr(event, "pool", None)
            labels.append(f"{event.type}#{event.attempt}" + (f":{reason}" if reason else ""))
    return tuple(labels)


def compare_job(
    report: WhatIfReport,
    history: Sequence[RecordedEvent],
    live: Policy,
    other: Policy,
    router: Router | None = None,
) -> None:
    """Replay one job under ``other`` (and ``router``'s plugins) and add both sides to the
    report."""
    real = [recorded for recorded in history if recorded.recorded_at <= report.as_of]
    if not real:
        return
    replay = _simulate(real, other, report.as_of, router)
    replayed = replay.events
    real_tally, real_state = _tally(_transitions(real, live), report.as_of)
    sim_tally, sim_state = _tally(replay.transitions, report.as_of)
    report.real.add(real_tally)
    report.simulated.add(sim_tally)
    real_decisions, sim_decisions = decisions(real), decisions(replayed)
    if real_decisions == sim_decisions:
        return
    report.jobs_changed += 1
    if len(report.examples) < DEFAULT_EXAMPLES:
        report.examples.append(
            JobChange(
                real[0].job_id,
                _status(real_state),
                _status(sim_state),
                real_decisions,
                sim_decisions,
            )
        )


def _status(state: JobState) -> str | None:
    return None if state.status is None else state.status.value


async def recorded_fleet(log: EventLog) -> FleetWindow:
    """Every outcome and wait the log records, for asking routing plugins about past instants.

    A what-if replay gives a plugin the fleet as it really was at the failure: the simulated
    jobs' own different fates do not feed back into it.
    """
    fleet = FleetWindow(keep=None)
    async for history in job_histories(log.scan()):
        fleet.observe(history)
    return fleet


async def whatif(
    log: EventLog,
    live: Policy,
    other: Policy,
    as_of: datetime,
    progress: Callable[[int], None] | None = None,
    router: Router | None = None,
) -> WhatIfReport:
    """Replay every job of the log under ``other`` (and ``router``'s routing plugins), one job
    in memory at a time."""
    report = WhatIfReport(as_of=as_of)
    async for history in job_histories(log.scan()):
        compare_job(report, history, live, other, router)
        if progress is not None:
            progress(len(history))
    return report

"""The tracking use case: record events, fold, decide, record decisions, project — in that order.

Record first, then act: derived events are appended to the log and their outbox rows committed
in the projection transaction before anything is published. Every step is idempotent (event ids,
deterministic decision ids, seq-guarded projection rows), so a crash anywhere is repaired by
processing the same input again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from app.domain.chain import RecordedEvent
from app.domain.events import JobEvent
from app.domain.machine import fold
from app.domain.policy import Policy
from app.domain.state import JobState
from app.ports import (
    AppendOutcome,
    AppendStatus,
    Clock,
    EventLog,
    ProjectionStore,
    ProjectionUpdate,
    StoreUnavailable,
    WriteRefused,
)
from app.services.projection import settled_update
from app.services.routing import Router, decide_routed
from app.services.snapshots import FoldCounts, Folded, JobFold, encode, fold_jobs

MAX_DECISIONS_PER_SETTLE = 8
TIMER_CLAIM = timedelta(seconds=10)
"""How long a claimed timer is left to its claimer before another tracker may fire it."""

log = logging.getLogger("jobtrail.tracking")

DecisionListener = Callable[[JobEvent, JobState], None]


@dataclass
class Tracker:
    """Owns the append → fold → decide → project path for live events and timers."""

    log: EventLog
    store: ProjectionStore
    policy: Policy
    clock: Clock
    on_decision: DecisionListener | None = None
    on_outbox: Callable[[], None] | None = None
    on_recorded: Callable[[Sequence[JobEvent], datetime], None] | None = None
    """Called after each committed batch with the events newly appended (not duplicates)."""
    on_timer_lag: Callable[[float], None] | None = None
    """Called with how late (seconds) the earliest due timer fired."""
    on_projected: Callable[[ProjectionUpdate, Sequence[RecordedEvent]], None] | None = None
    """Called after each commit, per job, with its update and the events newly projected."""
    folds: FoldCounts = field(default_factory=FoldCounts)
    """Where settles started their folds (a snapshot, or a whole history) and what they folded."""
    router: Router | None = None
    """Asks routing plugins, when the policy names any, for jobs whose cooldown has no recorded
    answer (a ``routed`` decision); fed every settled job's new events."""

    async def record(self, events: Sequence[JobEvent]) -> list[AppendOutcome]:
        """Append events (idempotently), then settle and project every job they touch."""
        now = self.clock.now()
        outcomes = await self.log.append_many(events, now)
        await self.settle(_unique(e.job_id for e in events), now, _runs(outcomes))
        if self.on_recorded is not None:
            fresh = [
                e
                for e, o in zip(events, outcomes, strict=True)
                if o.status is AppendStatus.APPENDED
            ]
            self.on_recorded(fresh, self.clock.now())
        return outcomes

    async def settle(
        self,
        job_ids: Sequence[str],
        now: datetime | None = None,
        appended: Mapping[str, Sequence[RecordedEvent]] | None = None,
    ) -> None:
        """Bring each job's decisions and projection up to date with its log, in one commit.

        One read of the jobs' snapshots and one of their entries since, one append of all
        decisions per round, one projection transaction: a batch costs a handful of round
        trips, not a few per job, and each job the events after its snapshot, not its history.
        A job whose ``appended`` entries (just appended, consecutive) follow its snapshot is
        folded from them without the read.
        """
        now = now or self.clock.now()
        jobs = await fold_jobs(self.log, self.store, job_ids, self.policy, self.folds, appended)
        self._observe(jobs)
        await self._decide_all(jobs, now)
        self._observe(jobs)
        seqs = await self.store.projected_seqs(list(jobs))
        updates = [
            self._update(job, seqs.get(job_id, 0))
            for job_id, job in jobs.items()
            if job.state.last_seq > seqs.get(job_id, 0)
        ]
        if updates:
            await self.store.apply(updates)
            if self.on_outbox is not None and any(u.outbox for u in updates):
                self.on_outbox()
            if self.on_projected is not None:
                for update in updates:
                    since = seqs.get(update.job.job_id, 0)
                    fresh = [e for e in jobs[update.job.job_id].events if e.seq > since]
                    self.on_projected(update, fresh)

    async def fire_due_timers(self, limit: int = 500) -> int:
        """Settle every job whose deadline has passed; returns how many were due."""
        now = self.clock.now()
        due = await self.store.claim_due_timers(now, limit, TIMER_CLAIM)
        if due:
            await self._settle_isolating([t.job_id for t in due], now)
        if self.on_timer_lag is not None:
            self.on_timer_lag((now - due[0].due_at).total_seconds() if due else 0.0)
        return len(due)

    async def _settle_isolating(self, job_ids: Sequence[str], now: datetime) -> None:
        """``settle``, isolating the jobs at fault when it fails for a reason but an outage.

        One job whose projection the store refuses must not hold back every timer claimed with
        it, pass after pass: the jobs are halved until the ones at fault stand alone, and every
        other job is settled. A job left out is logged; its claim runs out and it is tried
        again later.
        """
        try:
            await self.settle(job_ids, now)
        except StoreUnavailable:
            raise
        except Exception as exc:
            if len(job_ids) == 1:
                level = logging.WARNING if isinstance(exc, WriteRefused) else logging.ERROR
                log.log(level, "settling job %s failed: %s", job_ids[0], exc, exc_info=exc)
                return
            half = len(job_ids) // 2
            await self._settle_isolating(job_ids[:half], now)
            await self._settle_isolating(job_ids[half:], now)

    async def _decide_all(self, jobs: dict[str, JobFold], now: datetime) -> None:
        """Record what ``decide`` says for every job, until no job has anything more to decide.

        Each round folds the entries it has just appended: a job whose decisions did not all
        land right after its state (a rival writer's entries came first, or one was a duplicate)
        reads back the entries after its state instead.
        """
        pending = list(jobs)
        for _ in range(MAX_DECISIONS_PER_SETTLE):
            decided = {
                j: d
                for j in pending
                if (d := decide_routed(jobs[j].state, now, self.policy, self.router))
            }
            if not decided:
                return
            outcomes = await self.log.append_many(
                [e for events in decided.values() for e in events], now
            )
            tips = {job_id: jobs[job_id].state.last_seq for job_id in decided}
            fresh = _following(outcomes, tips)
            if behind := {j: seq + 1 for j, seq in tips.items() if j not in fresh}:
                fresh |= await self.log.read_jobs_from(behind)
            for job_id, events in decided.items():
                jobs[job_id].extend(fresh[job_id], self.policy)
                self.folds.events += len(fresh[job_id])
                self._announce(events, jobs[job_id].state)
            pending = list(decided)

    def _observe(self, jobs: dict[str, JobFold]) -> None:
        if self.router is not None:
            for job in jobs.values():
                self.router.fleet.observe(job.events)

    def _update(self, job: JobFold, projected_seq: int) -> ProjectionUpdate:
        """The job's projection update, with its snapshot at its last entry."""
        update, attempts = settled_update(
            job.state, job.before, job.events, projected_seq, self.policy
        )
        snapshot = encode(Folded(job.state, attempts), job.tip_hash, self.policy)
        return replace(update, snapshot=snapshot)

    def _announce(self, decided: Iterable[JobEvent], state: JobState) -> None:
        for event in decided:
            log.info(
                "decision",
                extra={
                    "decision": event.type,
                    "job_id": event.job_id,
                    "attempt": event.attempt,
                    "event_id": str(event.event_id),
                    "status": state.status.value if state.status else None,
                    "detail": getattr(event, "reason", None) or getattr(event, "queue", None),
                },
            )
            if self.on_decision is not None:
                self.on_decision(event, state)


def fold_history(events: Sequence[RecordedEvent], policy: Policy) -> JobState:
    """The state of a job from its recorded events (for readers such as status and rebuild)."""
    return fold(events, skew_tolerance=policy.clock_skew_tolerance)


def _runs(outcomes: Iterable[AppendOutcome]) -> dict[str, list[RecordedEvent]]:
    """The appended entries of each job whose outcomes are all new entries, one after another;
    a job with a duplicate or a gap (a rival writer's entry in between) is left out."""
    entries: dict[str, list[RecordedEvent]] = {}
    broken: set[str] = set()
    for outcome in outcomes:
        job = entries.setdefault(outcome.job_id, [])
        entry = outcome.entry
        if entry is None or (job and entry.seq != job[-1].seq + 1):
            broken.add(outcome.job_id)
            continue
        job.append(entry)
    return {job_id: job for job_id, job in entries.items() if job and job_id not in broken}


def _following(
    outcomes: Iterable[AppendOutcome], tips: Mapping[str, int]
) -> dict[str, list[RecordedEvent]]:
    """``_runs`` of the jobs whose first appended entry follows their tip (``tips``: the seq
    each job's state was folded up to)."""
    return {j: run for j, run in _runs(outcomes).items() if run[0].seq == tips[j] + 1}


def _unique(job_ids: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(job_ids))

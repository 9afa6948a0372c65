"""Latency samples of jobs: how long each attempt waited for a node and ran, and each job took.

Two sources give the same samples. From the log, a job's history is folded event by event and
every accepted transition that ends an interval yields one: reserved (wait since the attempt was
queued by its submission, retry, reroute or redrive), completed / failed / expired while
reserved (run), completed (end to end since the submission). From the projection, each attempt
row (``LatencyRow``) yields the same figures from its ``queued_at``, ``reserved_at`` and
``ended_at``. Instants are ``recorded_at`` (Jobtrail's clock), as every deadline is. A sample
belongs to the window holding its end instant.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from app.domain.chain import RecordedEvent
from app.domain.machine import evolve
from app.domain.sla import Measure
from app.domain.state import JobState, JobStatus
from app.ports import AttemptRow, EventLog, JobRow, LatencyRow
from app.services.analysis import Window

NONE = "(none)"
READ_BATCH = 200
"""Jobs whose histories are read in one round trip."""
RUN_OUTCOMES = ("completed", "failed", "expired")
"""Outcomes that end a run (a dead letter or cancellation of a reserved job is no run's end)."""
_ENDS_RUN = frozenset({JobStatus.COMPLETED, JobStatus.COOLING_DOWN, JobStatus.EXPIRED})
_LIVE = frozenset({JobStatus.QUEUED, JobStatus.RESERVED})


@dataclass(frozen=True, slots=True, order=True)
class GroupKey:
    """What a latency is reported by: the attempt's pool and the job's kind and tenant."""

    pool: str
    job_type: str
    priority: str
    tenant: str


@dataclass(frozen=True, slots=True)
class Sample:
    """One measured interval, ending at ``at``."""

    key: GroupKey
    measure: Measure
    seconds: float
    at: datetime


@dataclass(frozen=True, slots=True)
class Submission:
    """A job entering a pool at ``at`` (fairness counts shares of these)."""

    key: GroupKey
    at: datetime


@dataclass
class JobFacts:
    """What one job's history contributes to the latency and fairness reports."""

    samples: list[Sample] = field(default_factory=list)
    submissions: list[Submission] = field(default_factory=list)


def _key(state: JobState) -> GroupKey:
    spec = state.spec
    if spec is None:
        return GroupKey(state.pool or NONE, NONE, NONE, NONE)
    return GroupKey(state.pool or NONE, spec.job_type, spec.priority, spec.tenant)


def job_facts(history: Sequence[RecordedEvent], skew: timedelta) -> JobFacts:
    """Fold one job's history (seq order) into its samples and its submission."""
    facts = JobFacts()
    if not history:
        return facts
    state = JobState(job_id=history[0].job_id)
    queued_at: datetime | None = None
    reserved_at: datetime | None = None
    for recorded in history:
        after = evolve(state, recorded, skew)
        at = recorded.recorded_at
        if after.status is not state.status:
            if after.status is JobStatus.QUEUED:
                queued_at, reserved_at = at, None
                if state.status is None:
                    facts.submissions.append(Submission(_key(after), at))
            _ended(facts, state, after, at, queued_at, reserved_at)
            if after.status is JobStatus.RESERVED:
                reserved_at = at
        state = after
    return facts


def _ended(
    facts: JobFacts,
    before: JobState,
    after: JobState,
    at: datetime,
    queued_at: datetime | None,
    reserved_at: datetime | None,
) -> None:
    key, add = _key(before), facts.samples.append
    if after.status is JobStatus.RESERVED and before.status is JobStatus.QUEUED and queued_at:
        add(Sample(key, Measure.WAIT, _seconds(at - queued_at), at))
    if before.status is JobStatus.RESERVED and after.status in _ENDS_RUN and reserved_at:
        add(Sample(key, Measure.RUN, _seconds(at - reserved_at), at))
    submitted = after.submitted_at
    if after.status is JobStatus.COMPLETED and before.status in _LIVE and submitted:
        add(Sample(key, Measure.END_TO_END, _seconds(at - submitted), at))


def _seconds(delta: timedelta) -> float:
    return delta.total_seconds()


def row_samples(row: LatencyRow) -> list[Sample]:
    """The samples one projected attempt holds (whatever the window)."""
    key = GroupKey(row.pool or NONE, row.job_type or NONE, row.priority or NONE, row.tenant or NONE)
    samples = []
    if row.queued_at is not None and row.reserved_at is not None:
        wait = _seconds(row.reserved_at - row.queued_at)
        samples.append(Sample(key, Measure.WAIT, wait, row.reserved_at))
    kind = (row.outcome or "").partition(":")[0]
    if row.ended_at is not None and row.reserved_at is not None and kind in RUN_OUTCOMES:
        run = _seconds(row.ended_at - row.reserved_at)
        samples.append(Sample(key, Measure.RUN, run, row.ended_at))
    if kind == "completed" and row.ended_at is not None and row.submitted_at is not None:
        total = _seconds(row.ended_at - row.submitted_at)
        samples.append(Sample(key, Measure.END_TO_END, total, row.ended_at))
    return samples


def fresh_samples(
    job: JobRow, attempts: Iterable[AttemptRow], new_events: Sequence[RecordedEvent]
) -> list[Sample]:
    """The samples that ``new_events`` (just projected into ``attempts``) completed: those
    whose end instant is one of these events' for its attempt (the tracker's histograms)."""
    ends = {(e.event.attempt, e.recorded_at) for e in new_events}
    return [
        sample
        for attempt in attempts
        for sample in row_samples(LatencyRow.of(job, attempt))
        if (attempt.attempt, sample.at) in ends
    ]


def in_window(samples: Iterable[Sample], window: Window) -> list[Sample]:
    return [s for s in samples if s.at in window]


async def log_facts(log: EventLog, window: Window, skew: timedelta) -> AsyncIterator[JobFacts]:
    """The facts of every job with an event recorded in ``window``, its whole history folded
    (a job submitted before the window still has its submission instant); one batch of
    histories in memory at a time."""
    seen: set[str] = set()
    batch: list[str] = []
    async for recorded in log.scan_range(window.since, window.until):
        if recorded.job_id not in seen:
            seen.add(recorded.job_id)
            batch.append(recorded.job_id)
        if len(batch) >= READ_BATCH:
            for facts in await _read_facts(log, batch, skew):
                yield facts
            batch = []
    for facts in await _read_facts(log, batch, skew):
        yield facts


async def _read_facts(log: EventLog, job_ids: list[str], skew: timedelta) -> list[JobFacts]:
    if not job_ids:
        return []
    histories = await log.read_jobs(job_ids)
    return [job_facts(histories[job_id], skew) for job_id in job_ids]

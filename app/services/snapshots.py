"""Per-job snapshots: settling a job folds the events after its snapshot, not its whole history.

A snapshot is what a tracker folded of a job up to one entry of its log: the state, and the
attempts its events started (``AttemptsSoFar``), written with the job's projection row in the
same transaction. It names that entry by seq and by the entry's stored hash, and is used only
when the log, read from that seq, starts with an entry of that seq and that hash; otherwise (the
entry's hash differs, as after an edit of the log; the log ends before it, as after a restore of
an older log) the job is folded from its whole history, and the refusal is counted and logged:
`jobtrail verify` names an edited entry. So the cost of an event stays flat however long its job
lives, while what a settle decides and projects is still the fold of the log. ``rebuild`` and
``verify`` never read snapshots.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from pydantic import TypeAdapter, ValidationError
from pydantic_core import PydanticSerializationError

from app.domain.chain import RecordedEvent
from app.domain.machine import fold
from app.domain.policy import Policy
from app.domain.state import JobState
from app.ports import EventLog, JobSnapshot, ProjectionStore
from app.services.projection import AttemptsSoFar

FORMAT = 2
"""The snapshot's format. Bump it when ``JobState``, ``AttemptsSoFar`` or what folding means
changes: older snapshots are then not used, and each job is folded whole once more."""

log = logging.getLogger("jobtrail.snapshots")


@dataclass(frozen=True, slots=True)
class Folded:
    """What settling a job goes on from: its state and the attempts its events started."""

    state: JobState
    attempts: AttemptsSoFar = field(default_factory=AttemptsSoFar)


@dataclass(frozen=True, slots=True)
class _Body:
    format: int
    skew_tolerance: timedelta
    """The policy's clock-skew tolerance the state was folded with (it flags anomalies)."""
    state: JobState
    attempts: AttemptsSoFar


_BODY = TypeAdapter(_Body)


def encode(folded: Folded, tip_hash: str, policy: Policy) -> JobSnapshot | None:
    """The snapshot of ``folded``, whose last entry's stored hash is ``tip_hash``; None for a
    state JSON cannot hold (a lone surrogate in a text): that job is then folded whole."""
    body = _Body(FORMAT, policy.clock_skew_tolerance, folded.state, folded.attempts)
    try:
        text = _BODY.dump_json(body).decode()
    except (PydanticSerializationError, UnicodeError):
        return None
    return JobSnapshot(folded.state.last_seq, tip_hash, text)


def decode(
    job_id: str, snapshot: JobSnapshot, entries: Sequence[RecordedEvent], policy: Policy
) -> Folded | str:
    """The snapshot's fold if ``entries`` (the log from ``snapshot.seq`` on) starts with the very
    entry it was folded up to, and it was folded as this policy folds; else why not."""
    if not entries or entries[0].seq != snapshot.seq:
        return f"the log holds no entry {snapshot.seq} (the snapshot's)"
    if entries[0].hash != snapshot.hash:
        return f"the log's entry {snapshot.seq} has another hash than the snapshot's"
    return _body(job_id, snapshot, policy)


def decode_before(
    job_id: str, snapshot: JobSnapshot, appended: Sequence[RecordedEvent], policy: Policy
) -> Folded | str:
    """The snapshot's fold if ``appended`` (entries just appended) starts right after the very
    entry it was folded up to: their first entry was chained, in the append, onto the log's
    entry of the snapshot's seq, so its ``prev_hash`` is that entry's stored hash."""
    first = appended[0]
    if (first.seq, first.prev_hash) != (snapshot.seq + 1, snapshot.hash):
        return "the entries appended do not follow the snapshot's entry"
    return _body(job_id, snapshot, policy)


def _body(job_id: str, snapshot: JobSnapshot, policy: Policy) -> Folded | str:
    try:
        body = _BODY.validate_json(snapshot.body)
    except ValidationError:
        return "the snapshot cannot be read"
    if _BODY.dump_json(body).decode() != snapshot.body:  # a field missing, renamed or extra
        return "the snapshot is not as this version writes it"
    if body.format != FORMAT or body.skew_tolerance != policy.clock_skew_tolerance:
        return "the snapshot was folded in another format or with another skew tolerance"
    if (body.state.job_id, body.state.last_seq) != (job_id, snapshot.seq):
        return "the snapshot's state is not the job's at its seq"
    return Folded(body.state, body.attempts)


@dataclass
class JobFold:
    """One job being settled: the attempts it was folded from (``before``: the snapshot's, or
    none for a whole history), the events folded since, the state and the last entry's hash."""

    state: JobState
    before: AttemptsSoFar
    tip_hash: str
    events: list[RecordedEvent] = field(default_factory=list)

    def extend(self, events: Sequence[RecordedEvent], policy: Policy) -> None:
        if events:
            self.state = fold(events, self.state, policy.clock_skew_tolerance)
            self.events.extend(events)
            self.tip_hash = events[-1].hash


@dataclass
class FoldCounts:
    """Where settling started its jobs' folds, and how many events it folded (for tests, logs
    and the benchmark: a job folded whole costs as much as its history is long)."""

    from_snapshot: int = 0
    whole: int = 0
    refused: int = 0
    """Snapshots that did not match the log (their jobs are counted in ``whole`` too)."""
    events: int = 0


async def fold_jobs(
    event_log: EventLog,
    store: ProjectionStore,
    job_ids: Sequence[str],
    policy: Policy,
    counts: FoldCounts,
    appended: Mapping[str, Sequence[RecordedEvent]] | None = None,
) -> dict[str, JobFold]:
    """Each job's fold, from its snapshot where the log agrees with it, else from its whole log
    (jobs the log has no entry of are left out); two reads, three when a snapshot is refused.

    A job whose ``appended`` entries (consecutive, just appended by the caller) follow its
    snapshot's entry, or start its log, is folded from them without reading the log.
    """
    snapshots = await store.snapshots(job_ids)
    folds = _fold_appended(snapshots, appended or {}, policy, counts)
    starts = {
        job_id: snapshots[job_id].seq if job_id in snapshots else 1
        for job_id in job_ids
        if job_id not in folds
    }
    read = await event_log.read_jobs_from(starts) if starts else {}
    refused: list[str] = []
    for job_id, entries in read.items():
        snapshot = snapshots.get(job_id)
        if snapshot is None:
            if entries:
                folds[job_id] = _whole(entries, policy, counts)
            continue
        folded = decode(job_id, snapshot, entries, policy)
        if isinstance(folded, str):
            _refused(job_id, snapshot, folded, counts)
            refused.append(job_id)
            continue
        folds[job_id] = JobFold(folded.state, folded.attempts, snapshot.hash)
        folds[job_id].extend(entries[1:], policy)
        counts.from_snapshot += 1
        counts.events += len(entries) - 1
    if refused:
        for job_id, history in (await event_log.read_jobs(refused)).items():
            if history:
                folds[job_id] = _whole(history, policy, counts)
    return {job_id: folds[job_id] for job_id in job_ids if job_id in folds}


def _fold_appended(
    snapshots: Mapping[str, JobSnapshot],
    appended: Mapping[str, Sequence[RecordedEvent]],
    policy: Policy,
    counts: FoldCounts,
) -> dict[str, JobFold]:
    """The jobs whose just-appended entries are all the log holds after their snapshot (or all
    it holds); any other job is left to the read (which also counts a refused snapshot)."""
    folds: dict[str, JobFold] = {}
    for job_id, entries in appended.items():
        snapshot = snapshots.get(job_id)
        if snapshot is None:
            if entries[0].seq == 1:
                folds[job_id] = _whole(entries, policy, counts)
            continue
        folded = decode_before(job_id, snapshot, entries, policy)
        if isinstance(folded, Folded):
            folds[job_id] = JobFold(folded.state, folded.attempts, snapshot.hash)
            folds[job_id].extend(entries, policy)
            counts.from_snapshot += 1
            counts.events += len(entries)
    return folds


def _whole(history: Sequence[RecordedEvent], policy: Policy, counts: FoldCounts) -> JobFold:
    job = JobFold(JobState(job_id=history[0].job_id), AttemptsSoFar(), history[-1].hash)
    job.extend(history, policy)
    counts.whole += 1
    counts.events += len(history)
    return job


def _refused(job_id: str, snapshot: JobSnapshot, reason: str, counts: FoldCounts) -> None:
    counts.refused += 1
    suspicious = reason.startswith("the log")
    log.log(
        logging.WARNING if suspicious else logging.INFO,
        "snapshot of job %s at seq %d not used: %s; folding its whole history%s",
        job_id,
        snapshot.seq,
        reason,
        " (`jobtrail verify` names an edited entry)" if suspicious else "",
    )

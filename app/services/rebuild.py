"""Rebuild: replay the whole log into fresh projection tables, prove them equal, then swap.

Blue/green: the rows are written to fresh tables beside the live ones, compared with the live
projection job by job, and swapped in only when every job is identical (or when forced). The
outbox and the checkpoints are never rebuilt: history must not be published again.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, fields

from app.domain.chain import RecordedEvent
from app.domain.policy import Policy
from app.ports import (
    AttemptRow,
    EventLog,
    JobBundle,
    JobRow,
    ProjectionUpdate,
    RebuildTarget,
    Side,
    TimerRow,
)
from app.services.projection import projection_update, without_outbox
from app.services.tracking import fold_history

DEFAULT_BATCH_JOBS = 2000
DEFAULT_SHOWN_DIFFERENCES = 10

Progress = Callable[[int], None]
"""Told how many more events were replayed."""


@dataclass(frozen=True, slots=True)
class Difference:
    """One job whose rebuilt rows differ from the live ones: ``(what, live, rebuilt)`` triples."""

    job_id: str
    changes: tuple[tuple[str, str, str], ...]


@dataclass
class RebuildReport:
    """What a rebuild replayed, how it compared with the live projection, and whether it swapped."""

    events: int = 0
    jobs_rebuilt: int = 0
    live_jobs: int = 0
    identical: int = 0
    different: int = 0
    first_differences: list[Difference] = field(default_factory=list)
    swapped: bool = False

    @property
    def equal(self) -> bool:
        return self.different == 0


async def rebuild(
    log: EventLog,
    target: RebuildTarget,
    policy: Policy,
    *,
    force: bool = False,
    dry_run: bool = False,
    confirm: Callable[[RebuildReport], bool] | None = None,
    batch_jobs: int = DEFAULT_BATCH_JOBS,
    shown: int = DEFAULT_SHOWN_DIFFERENCES,
    progress: Progress | None = None,
) -> RebuildReport:
    """Replay the log into fresh tables, compare with the live ones, swap if equal or forced.

    ``dry_run`` never swaps; ``confirm`` (if given) is asked, with the comparison, before a swap.
    """
    report = RebuildReport()
    await target.prepare()
    try:
        await _replay_into(log, target, policy, report, batch_jobs, progress)
        await compare(target, report, shown)
    except BaseException:
        await target.discard()
        raise
    wanted = (report.equal or force) and not dry_run
    if wanted and (confirm is None or confirm(report)):
        await target.swap()
        report.swapped = True
    else:
        await target.discard()
    return report


async def job_histories(
    events: AsyncIterator[RecordedEvent],
) -> AsyncIterator[list[RecordedEvent]]:
    """Group a (job_id, seq)-ordered stream into one history per job, one job at a time."""
    current: list[RecordedEvent] = []
    async for recorded in events:
        if current and recorded.job_id != current[0].job_id:
            yield current
            current = []
        current.append(recorded)
    if current:
        yield current


def rebuilt_update(history: Sequence[RecordedEvent], policy: Policy) -> ProjectionUpdate:
    """The rows one job's history projects to, without outbox messages."""
    state = fold_history(history, policy)
    return without_outbox(projection_update(state, history, state.last_seq, policy))


async def _replay_into(
    log: EventLog,
    target: RebuildTarget,
    policy: Policy,
    report: RebuildReport,
    batch_jobs: int,
    progress: Progress | None,
) -> None:
    """Fold each job and write batches, building the next batch while the last one is written."""
    writing: asyncio.Task[None] | None = None
    batch: list[ProjectionUpdate] = []
    try:
        async for history in job_histories(log.scan()):
            batch.append(rebuilt_update(history, policy))
            report.events += len(history)
            report.jobs_rebuilt += 1
            if progress is not None:
                progress(len(history))
            if len(batch) >= batch_jobs:
                if writing is not None:
                    await writing
                writing = asyncio.create_task(target.write(batch))
                batch = []
        if writing is not None:
            await writing
        if batch:
            await target.write(batch)
    finally:
        if writing is not None and not writing.done():
            writing.cancel()
            await asyncio.gather(writing, return_exceptions=True)


async def compare(target: RebuildTarget, report: RebuildReport, shown: int) -> None:
    """Count identical and different jobs, and show the first differences.

    The database proves the common case (every row equal) by itself; only when it finds a
    difference are both sides read, merged by job_id, to tell which jobs differ and how.
    """
    if await target.same_rows():
        report.live_jobs = report.identical = report.jobs_rebuilt
        return
    live, fresh = target.bundles(Side.LIVE), target.bundles(Side.FRESH)
    left, right = await anext(live, None), await anext(fresh, None)
    while left is not None or right is not None:
        pair: tuple[JobBundle | None, JobBundle | None]
        if right is None or (left is not None and left.job_id < right.job_id):
            pair = (left, None)
        elif left is None or right.job_id < left.job_id:
            pair = (None, right)
        else:
            pair = (left, right)
        _tally(report, pair[0], pair[1], shown)
        if pair[0] is not None:
            left = await anext(live, None)
        if pair[1] is not None:
            right = await anext(fresh, None)


def _tally(
    report: RebuildReport, live: JobBundle | None, fresh: JobBundle | None, shown: int
) -> None:
    if live is not None and live.job is not None:
        report.live_jobs += 1
    changes = bundle_changes(live, fresh)
    if not changes:
        report.identical += 1
        return
    report.different += 1
    found = live if live is not None else fresh
    if found is not None and len(report.first_differences) < shown:
        report.first_differences.append(Difference(found.job_id, tuple(changes[:5])))


def bundle_changes(live: JobBundle | None, fresh: JobBundle | None) -> list[tuple[str, str, str]]:
    """What differs between a job's live and rebuilt rows, as ``(what, live, rebuilt)``."""
    if live is None or fresh is None:
        return [("job", _presence(live), _presence(fresh))]
    changes = _row_changes("jobs", live.job, fresh.job)
    live_attempts = {a.attempt: a for a in live.attempts}
    fresh_attempts = {a.attempt: a for a in fresh.attempts}
    for number in sorted(live_attempts.keys() | fresh_attempts.keys()):
        changes += _row_changes(
            f"attempts[{number}]", live_attempts.get(number), fresh_attempts.get(number)
        )
    changes += _row_changes("timers", live.timer, fresh.timer)
    return changes


def _row_changes(
    table: str,
    live: JobRow | AttemptRow | TimerRow | None,
    fresh: JobRow | AttemptRow | TimerRow | None,
) -> list[tuple[str, str, str]]:
    if live == fresh:
        return []
    if live is None or fresh is None:
        return [(table, _presence(live), _presence(fresh))]
    return [
        (f"{table}.{f.name}", repr(getattr(live, f.name)), repr(getattr(fresh, f.name)))
        for f in fields(live)
        if getattr(live, f.name) != getattr(fresh, f.name)
    ]


def _presence(row: object | None) -> str:
    return "missing" if row is None else "present"

"""The auditors' use cases: state as of an instant, fleet snapshots, range checks, daily anchors.

Everything here is computed from the event log alone (never from the projections), so it answers
what the log recorded, whatever the projections say. Instants are compared with ``recorded_at``
(Jobtrail's clock): "as of T" means "folded from the events recorded at or before T".
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum

from app.domain.chain import ChainBreak, verify_chain
from app.domain.merkle import Anchor, DayDigester, anchor_changes, day_bounds
from app.domain.policy import Policy
from app.ports import AnchorStore, Clock, EventLog, JobRow, RecordedRange
from app.services.fleet import (
    CorruptEntry,
    FleetGroup,
    FleetKey,
    FleetPage,
    fleet_as_of,
    fleet_page,
)
from app.services.projection import job_row
from app.services.tracking import fold_history

# The fleet lives in app.services.fleet; the auditors' entry points import it from here too.
__all__ = [
    "CorruptEntry",
    "FleetGroup",
    "FleetKey",
    "FleetPage",
    "fleet_as_of",
    "fleet_page",
]

ANCHOR_GRACE = timedelta(minutes=10)
"""How long after midnight UTC a day may still receive entries (batches recorded just before)."""

OnProgress = Callable[[int, int], None]
"""Called with (done, total) as a long check advances."""


def parse_instant(text: str) -> datetime:
    """An ISO-8601 instant with an explicit offset (``Z``, ``+02:00``), or a date meaning 00:00Z."""
    try:
        return datetime.combine(date.fromisoformat(text), time(), tzinfo=UTC)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text[:60]!r} is not an ISO-8601 instant (e.g. 2026-11-27T14:02:00Z)"
        ) from None
    if moment.tzinfo is None:
        raise ValueError(f"{text[:60]!r} has no UTC offset: add Z or +HH:MM")
    return moment.astimezone(UTC)


def parse_day(text: str) -> date:
    """A UTC day written YYYY-MM-DD."""
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            return date.fromisoformat(text)
    except ValueError:
        pass
    raise ValueError(f"{text[:60]!r} is not a day (YYYY-MM-DD)")


async def job_row_as_of(log: EventLog, policy: Policy, job_id: str, at: datetime) -> JobRow | None:
    """The job as folded from its events recorded at or before ``at``; None if it had none."""
    events = await log.read_job(job_id, until=at)
    if not events:
        return None
    return job_row(fold_history(events, policy), policy)


@dataclass(frozen=True, slots=True)
class RangeReport:
    """The outcome of verifying every job with an entry recorded in [since, until)."""

    since: datetime
    until: datetime
    checked: int
    broken: tuple[ChainBreak, ...]


async def verify_range(
    log: EventLog,
    recorded: RecordedRange,
    since: datetime,
    until: datetime,
    progress: OnProgress | None = None,
) -> RangeReport:
    """Re-verify the whole chain of each job that has an entry recorded in [since, until)."""
    if since >= until:
        raise ValueError(f"since ({since.isoformat()}) must be before until ({until.isoformat()})")
    job_ids = sorted({leaf.job_id async for leaf in recorded.scan_recorded(since, until)})
    breaks = await verify_jobs(log, job_ids, progress)
    return RangeReport(since, until, len(job_ids), tuple(breaks))


async def verify_jobs(
    log: EventLog, job_ids: Iterable[str], progress: OnProgress | None = None
) -> list[ChainBreak]:
    """The first broken link of each of ``job_ids`` whose chain is broken."""
    ids = list(job_ids)
    breaks: list[ChainBreak] = []
    for done, job_id in enumerate(ids, start=1):
        found = verify_chain(job_id, await log.read_job_raw(job_id))
        if found is not None:
            breaks.append(found)
        if progress is not None:
            progress(done, len(ids))
    return breaks


def default_anchor_day(clock: Clock) -> date:
    """Yesterday, UTC."""
    return (clock.now().astimezone(UTC) - timedelta(days=1)).date()


async def compute_anchor(recorded: RecordedRange, day: date, computed_at: datetime) -> Anchor:
    """The day's anchor as the log stands now."""
    anchor, _ = await _digest_day(recorded, day, computed_at)
    return anchor


async def _digest_day(
    recorded: RecordedRange, day: date, computed_at: datetime
) -> tuple[Anchor, list[str]]:
    """The day's anchor and the jobs with entries that day, in one pass."""
    digester = DayDigester(day)
    job_ids: set[str] = set()
    async for leaf in recorded.scan_recorded(*day_bounds(day)):
        digester.add(leaf)
        job_ids.add(leaf.job_id)
    return digester.anchor(computed_at), sorted(job_ids)


class AnchorStatus(StrEnum):
    ANCHORED = "anchored"
    UNCHANGED = "unchanged"
    CHANGED = "changed"
    BROKEN = "broken"


@dataclass(frozen=True, slots=True)
class AnchorCheck:
    """A day's stored anchor next to the same day recomputed from the log now.

    ``breaks`` are the broken chains among the jobs with entries that day: the root covers the
    entries' hashes, the chains tie each hash to its content, so a day is unchanged only if both
    hold.
    """

    status: AnchorStatus
    anchored: Anchor
    current: Anchor
    breaks: tuple[ChainBreak, ...] = ()

    @property
    def changes(self) -> list[str]:
        """What differs, in words (empty if nothing)."""
        changes = anchor_changes(self.anchored, self.current)
        if self.breaks:
            changes.append(f"{len(self.breaks)} broken chain(s) among the day's jobs")
        return changes


async def anchor_day(
    log: EventLog, recorded: RecordedRange, store: AnchorStore, clock: Clock, day: date
) -> AnchorCheck:
    """Verify the day's jobs, then compute and store its anchor; never replace a stored one.

    A day whose chains are broken is not anchored (status BROKEN): an anchor must not certify a
    history that is already altered.
    """
    now = clock.now()
    ready_at = day_bounds(day)[1] + ANCHOR_GRACE
    if ready_at > now:
        raise ValueError(f"day {day} is not over yet: anchor it after {ready_at:%Y-%m-%dT%H:%MZ}")
    current, job_ids = await _digest_day(recorded, day, now)
    breaks = tuple(await verify_jobs(log, job_ids))
    if breaks:
        return AnchorCheck(AnchorStatus.BROKEN, current, current, breaks)
    await store.ensure_schema()
    stored = await store.add(current)
    if stored is None:
        return AnchorCheck(AnchorStatus.ANCHORED, current, current)
    status = AnchorStatus.UNCHANGED if stored.same_digest(current) else AnchorStatus.CHANGED
    return AnchorCheck(status, stored, current)


async def verify_anchors(
    log: EventLog,
    recorded: RecordedRange,
    store: AnchorStore,
    clock: Clock,
    since: date | None = None,
    progress: OnProgress | None = None,
) -> list[AnchorCheck]:
    """Recompute each stored day (from ``since``), compare, and verify the day's job chains."""
    anchors = await store.list_anchors(since)
    checks = []
    for done, anchored in enumerate(anchors, start=1):
        current, job_ids = await _digest_day(recorded, anchored.day, clock.now())
        breaks = tuple(await verify_jobs(log, job_ids))
        unchanged = anchored.same_digest(current) and not breaks
        status = AnchorStatus.UNCHANGED if unchanged else AnchorStatus.CHANGED
        checks.append(AnchorCheck(status, anchored, current, breaks))
        if progress is not None:
            progress(done, len(anchors))
    return checks

"""The auditors' services on real logs (SQLite, PostgreSQL, MongoDB-speaking) and the in-memory fake.

The log is filled by the real ``Tracker`` service on a fixed clock, with deterministic event ids, so
every backend holds the very same entries and must give the very same answers and Merkle roots.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from app.adapters.anchor_store import (
    InMemoryAnchorStore,
    MongoAnchorStore,
    SqlAnchorStore,
    by_recording_time,
    open_anchor_store,
)
from app.adapters.log_factory import open_event_log
from app.adapters.memory_log import InMemoryEventLog
from app.adapters.memory_store import InMemoryProjectionStore
from app.domain.events import Completed, Failed, JobEvent, Reserved, Submitted
from app.domain.merkle import EMPTY_ROOT, Anchor, EntryRef, Leaf, day_bounds, merkle_root
from app.domain.policy import Policy
from app.ports import EventLog, LogUnavailable
from app.services.audit import (
    AnchorStatus,
    FleetKey,
    anchor_day,
    compute_anchor,
    default_anchor_day,
    fleet_as_of,
    job_row_as_of,
    parse_day,
    parse_instant,
    verify_anchors,
    verify_range,
)
from app.services.tracking import Tracker

pytestmark = pytest.mark.integration

DAY = date(2026, 11, 25)
T0 = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
NEXT_DAY = DAY + timedelta(days=1)
POLICY = Policy.from_toml(
    """
jitter = 0.2
[defaults]
max_attempts = 3
lease_seconds = 300
ttl_seconds = 86400
[defaults.retry]
initial_interval_seconds = 10
backoff_coefficient = 2.0
max_interval_seconds = 100
"""
)
NS = uuid.UUID("0b6f1d2e-9a51-4c1e-8a53-6f0d0c5e2a77")
JOBS = {  # job -> (pool, tenant, model)
    "job-a": ("gpu-a", "acme", "llama"),
    "job-b": ("gpu-a", "beta", "llama"),
    "job-c": ("shared", "acme", "mistral"),
    "job-d": ("shared", "beta", "llama"),
}


class FixedClock:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def now(self) -> datetime:
        return self.at


def _env(job: str, what: str, at: datetime, attempt: int = 1) -> dict[str, Any]:
    return {
        "event_id": uuid.uuid5(NS, f"{job}|{what}|{attempt}"),
        "job_id": job,
        "occurred_at": at,
        "attempt": attempt,
        "source": "cloud" if what == "submitted" else "node-1",
    }


def _submitted(job: str, at: datetime) -> Submitted:
    pool, tenant, model = JOBS[job]
    return Submitted(
        job_type="sync",
        model=model,
        priority="bulk",
        tenant=tenant,
        pool=pool,
        queue=f"jobtrail.work.{pool}.sync",
        payload={"job": job},
        **_env(job, "submitted", at),
    )


def _reserved(job: str, at: datetime, attempt: int = 1) -> Reserved:
    return Reserved(node_id="node-1", **_env(job, "reserved", at, attempt))


def _completed(job: str, at: datetime, attempt: int = 1) -> Completed:
    return Completed(node_id="node-1", **_env(job, "completed", at, attempt))


def _failed(job: str, at: datetime) -> Failed:
    return Failed(node_id="node-1", error_code="oom", retryable=True, **_env(job, "failed", at))


async def fill(log: EventLog) -> FixedClock:
    """A short day of traffic, decisions included, ending just after midnight.

    job-a: reserved at 10:01, completed at 10:02.  job-b: reserved 10:01, failed 10:02, retried
    by Jobtrail after its cooldown, reserved again at 23:59:59.999, completed next day 00:00.
    job-c: reserved at 10:05 and never heard of again: at 12:00 its lease is found expired, and
    at 23:59:59.999 (the next timer run) it is retried.
    job-d: submitted the next day.
    """
    clock = FixedClock(T0)
    tracker = Tracker(log, InMemoryProjectionStore(), POLICY, clock)

    async def at(moment: datetime, *events: JobEvent) -> None:
        clock.at = moment
        if events:
            await tracker.record(events)
        await tracker.fire_due_timers()

    await at(T0, _submitted("job-a", T0), _submitted("job-b", T0), _submitted("job-c", T0))
    await at(T0 + timedelta(minutes=1), _reserved("job-a", T0), _reserved("job-b", T0))
    await at(T0 + timedelta(minutes=2), _completed("job-a", T0), _failed("job-b", T0))
    await at(T0 + timedelta(minutes=4))  # job-b's cooldown (≤ 12 s) is over: retried
    await at(T0 + timedelta(minutes=5), _reserved("job-c", T0))
    await at(T0 + timedelta(hours=2))  # job-c's lease ran out: expired, then retried
    end = datetime.combine(NEXT_DAY, datetime.min.time(), tzinfo=UTC)
    await at(end - timedelta(milliseconds=1), _reserved("job-b", end, attempt=2))
    await at(end, _completed("job-b", end, attempt=2), _submitted("job-d", end))
    return clock


@dataclass
class Backend:
    name: str
    log: EventLog
    anchors: InMemoryAnchorStore | MongoAnchorStore | SqlAnchorStore


@pytest.fixture(params=["memory", "sqlite", "postgresql", "mongodb"])
def log_url(request: pytest.FixtureRequest) -> str:
    names = {"sqlite": "sqlite_url", "postgresql": "pg_url", "mongodb": "mongo_url"}
    return "memory" if request.param == "memory" else request.getfixturevalue(names[request.param])


@pytest.fixture
async def backend(log_url: str) -> AsyncIterator[Backend]:
    if log_url == "memory":
        memory = InMemoryEventLog(page_size=2)
        yield Backend("memory", memory, InMemoryAnchorStore(memory))
        return
    log = open_event_log(log_url)
    await log.ensure_schema()
    anchors: MongoAnchorStore | SqlAnchorStore = (
        MongoAnchorStore(log_url, page_size=2)
        if log_url.startswith("mongodb")
        else SqlAnchorStore(log_url, page_size=2)  # small pages: keyset paging over ties
    )
    try:
        yield Backend(log_url.split(":")[0], log, anchors)
    finally:
        await anchors.close()
        await log.close()


async def _leaves(backend: Backend, since: datetime, until: datetime) -> list[Leaf]:
    return [leaf async for leaf in backend.anchors.scan_recorded(since, until)]


async def _expected_leaves(log: EventLog, since: datetime, until: datetime) -> list[Leaf]:
    leaves = [
        Leaf(e.recorded_at, e.job_id, e.seq, e.hash)
        async for e in log.scan_raw()
        if since <= e.recorded_at < until
    ]
    return sorted(leaves, key=lambda leaf: leaf.order)


async def test_as_of_folds_only_what_was_recorded_by_then(backend: Backend) -> None:
    await fill(backend.log)

    async def status(job: str, at: datetime) -> str | None:
        row = await job_row_as_of(backend.log, POLICY, job, at)
        return "absent" if row is None else row.status

    assert await status("job-a", T0 - timedelta(microseconds=1)) == "absent"
    assert await status("job-a", T0) == "queued"  # recorded_at == at is included
    assert await status("job-a", T0 + timedelta(seconds=90)) == "reserved"
    assert await status("job-a", T0 + timedelta(minutes=3)) == "completed"
    assert await status("job-b", T0 + timedelta(minutes=3)) == "cooling_down"
    assert await status("job-b", T0 + timedelta(minutes=4)) == "queued"
    assert await status("job-c", T0 + timedelta(hours=1)) == "reserved"
    end = datetime.combine(NEXT_DAY, datetime.min.time(), tzinfo=UTC)
    assert await status("job-b", end - timedelta(microseconds=1)) == "reserved"
    assert await status("job-b", end) == "completed"
    row = await job_row_as_of(backend.log, POLICY, "job-b", end - timedelta(minutes=1))
    assert row is not None and (row.status, row.attempt, row.last_seq) == ("queued", 2, 4)


async def test_fleet_as_of_equals_each_job_folded_as_of_the_same_instant(
    backend: Backend,
) -> None:
    await fill(backend.log)
    instants = sorted({e.recorded_at async for e in backend.log.scan_raw()})
    for at in [
        T0 - timedelta(seconds=1),
        *instants,
        *(i - timedelta(microseconds=1) for i in instants),
    ]:
        expected: dict[tuple[str | None, str | None], list[str]] = {}
        for job in JOBS:
            row = await job_row_as_of(backend.log, POLICY, job, at)
            if row is not None:
                expected.setdefault((row.pool, row.status), []).append(job)
        groups = await fleet_as_of(backend.log, POLICY, at, by=FleetKey.POOL, with_ids=True)
        assert {(g.key, g.status): list(g.job_ids) for g in groups} == expected, at
        assert all(g.count == len(g.job_ids) for g in groups)


async def test_fleet_filters_by_status_and_groups_by_tenant_model_or_nothing(
    backend: Backend,
) -> None:
    await fill(backend.log)
    at = T0 + timedelta(seconds=90)
    by_tenant = await fleet_as_of(backend.log, POLICY, at, status="reserved", by=FleetKey.TENANT)
    assert [(g.key, g.status, g.count, g.job_ids) for g in by_tenant] == [
        ("acme", "reserved", 1, ()),
        ("beta", "reserved", 1, ()),
    ]
    by_model = await fleet_as_of(backend.log, POLICY, at, by=FleetKey.MODEL, with_ids=True)
    assert [(g.key, g.status, g.job_ids) for g in by_model] == [
        ("llama", "reserved", ("job-a", "job-b")),
        ("mistral", "queued", ("job-c",)),
    ]
    overall = await fleet_as_of(backend.log, POLICY, T0 + timedelta(days=2))
    assert [(g.key, g.status, g.count) for g in overall] == [
        (None, "completed", 2),
        (None, "queued", 2),
    ]
    assert await fleet_as_of(backend.log, POLICY, T0 - timedelta(days=1)) == []


async def test_scan_recorded_is_the_log_ordered_by_recording_time_with_half_open_bounds(
    backend: Backend,
) -> None:
    await fill(backend.log)
    start, end = day_bounds(DAY)
    for since, until in [
        (start, end),
        (T0, T0 + timedelta(minutes=2)),  # ties at T0 span pages of 2
        (end - timedelta(milliseconds=1), end + timedelta(hours=1)),
        (end, end),
    ]:
        got = await _leaves(backend, since, until)
        assert got == await _expected_leaves(backend.log, since, until), (since, until)
    day = await _leaves(backend, start, end)
    assert [(leaf.job_id, leaf.seq) for leaf in day[:3]] == [
        ("job-a", 1),
        ("job-b", 1),
        ("job-c", 1),
    ]
    assert all(leaf.recorded_at < end for leaf in day)


async def test_verify_range_checks_every_job_with_events_in_the_range(backend: Backend) -> None:
    await fill(backend.log)
    end = datetime.combine(NEXT_DAY, datetime.min.time(), tzinfo=UTC)
    seen: list[tuple[int, int]] = []
    report = await verify_range(
        backend.log, backend.anchors, *day_bounds(DAY), lambda d, t: seen.append((d, t))
    )
    assert (report.checked, report.broken) == (3, ())
    assert seen == [(1, 3), (2, 3), (3, 3)]
    report = await verify_range(backend.log, backend.anchors, end, end + timedelta(seconds=1))
    assert report.checked == 2  # job-b's completion and job-d's submission
    report = await verify_range(
        backend.log, backend.anchors, T0 + timedelta(minutes=6), T0 + timedelta(minutes=30)
    )
    assert report.checked == 0
    with pytest.raises(ValueError, match="must be before until"):
        await verify_range(backend.log, backend.anchors, end, end)


async def test_anchor_is_stored_once_and_roots_agree_across_backends(backend: Backend) -> None:
    clock = await fill(backend.log)
    reference = InMemoryEventLog()
    await fill(reference)
    expected = await compute_anchor(InMemoryAnchorStore(reference), DAY, clock.now())
    leaves = await _expected_leaves(backend.log, *day_bounds(DAY))
    assert expected.root == merkle_root(leaf.hash for leaf in leaves)

    clock.at = datetime(2026, 11, 26, 0, 10, tzinfo=UTC)
    assert default_anchor_day(clock) == DAY
    first = await anchor_day(backend.log, backend.anchors, backend.anchors, clock, DAY)
    assert first.status is AnchorStatus.ANCHORED
    assert first.anchored.same_digest(expected)  # the same entries on every backend
    assert (first.anchored.first, first.anchored.last) == (
        EntryRef("job-a", 1),
        EntryRef("job-c", 4),
    )
    assert first.anchored.count == len(leaves)

    clock.at += timedelta(days=3)
    again = await anchor_day(backend.log, backend.anchors, backend.anchors, clock, DAY)
    assert again.status is AnchorStatus.UNCHANGED
    assert again.anchored == first.anchored  # the stored one, with its first computed_at
    stored = await backend.anchors.list_anchors()
    assert stored == [first.anchored]


async def test_an_unfinished_day_is_refused_and_an_empty_day_has_the_empty_root(
    backend: Backend,
) -> None:
    clock = FixedClock(datetime(2026, 11, 26, 0, 9, tzinfo=UTC))
    with pytest.raises(ValueError, match="not over yet"):
        await anchor_day(backend.log, backend.anchors, backend.anchors, clock, DAY)
    clock.at += timedelta(minutes=1)
    empty = await anchor_day(backend.log, backend.anchors, backend.anchors, clock, DAY)
    assert (empty.anchored.root, empty.anchored.count, empty.anchored.first) == (
        EMPTY_ROOT,
        0,
        None,
    )


async def test_a_second_different_anchor_for_a_day_is_refused(backend: Backend) -> None:
    await backend.anchors.ensure_schema()
    at = datetime(2026, 11, 26, 1, tzinfo=UTC)
    original = Anchor(DAY, "a" * 64, 3, EntryRef("x", 1), EntryRef("y", 2), at)
    assert await backend.anchors.add(original) is None
    forged = Anchor(DAY, "b" * 64, 2, None, None, at + timedelta(days=1))
    assert await backend.anchors.add(forged) == original
    other_day = Anchor(NEXT_DAY, "c" * 64, 0, None, None, at)
    assert await backend.anchors.add(other_day) is None
    assert await backend.anchors.list_anchors() == [original, other_day]
    assert await backend.anchors.list_anchors(since=NEXT_DAY) == [other_day]


async def test_verify_anchors_sees_a_day_that_changed_after_it_was_anchored(
    backend: Backend,
) -> None:
    clock = await fill(backend.log)
    clock.at = datetime(2026, 11, 27, 1, tzinfo=UTC)
    for day in (DAY, NEXT_DAY):
        assert (
            await anchor_day(backend.log, backend.anchors, backend.anchors, clock, day)
        ).status == "anchored"
    checks = await verify_anchors(backend.log, backend.anchors, backend.anchors, clock)
    assert [(c.anchored.day, c.status) for c in checks] == [
        (DAY, AnchorStatus.UNCHANGED),
        (NEXT_DAY, AnchorStatus.UNCHANGED),
    ]
    # A late entry that claims to have been recorded on DAY (chain-consistent: a real append).
    await backend.log.append(_completed("job-c", T0, attempt=2), T0 + timedelta(hours=3))
    checks = await verify_anchors(backend.log, backend.anchors, backend.anchors, clock)
    changed = [c for c in checks if c.status is AnchorStatus.CHANGED]
    assert [c.anchored.day for c in changed] == [DAY]
    assert changed[0].breaks == ()  # every chain is intact: only the anchor can tell
    assert any("entries anchored" in change and "(+1)" in change for change in changed[0].changes)
    only_next = await verify_anchors(
        backend.log, backend.anchors, backend.anchors, clock, since=NEXT_DAY
    )
    assert [c.status for c in only_next] == [AnchorStatus.UNCHANGED]
    redo = await anchor_day(backend.log, backend.anchors, backend.anchors, clock, DAY)
    assert redo.status is AnchorStatus.CHANGED and redo.changes


def test_open_anchor_store_follows_the_log_url(tmp_path: Any) -> None:
    assert isinstance(open_anchor_store("mongodb://127.0.0.1:1/x"), MongoAnchorStore)
    assert isinstance(open_anchor_store(f"sqlite:///{tmp_path}/l.db"), SqlAnchorStore)
    with pytest.raises(ValueError, match="invalid"):
        open_anchor_store("not a url")
    with pytest.raises(ValueError, match="invalid MongoDB URL"):
        open_anchor_store("mongodb://")


async def test_an_unreachable_sql_store_is_log_unavailable() -> None:
    # (MongoDB's unreachable case runs in a subprocess in the e2e tests: the driver's monitor
    # leaves a refused socket to the garbage collector, which pytest's warnings-as-errors catch.)
    store = SqlAnchorStore("postgresql+asyncpg://postgres@127.0.0.1:1/x")
    with pytest.raises(LogUnavailable):
        await store.list_anchors()
    with pytest.raises(LogUnavailable):
        await store.ensure_schema()
    with pytest.raises(LogUnavailable):
        await store.add(Anchor(DAY, "r", 0, None, None, T0))
    with pytest.raises(LogUnavailable):
        await _drain(store.scan_recorded(T0, T0 + timedelta(days=1)))
    await store.close()


async def _drain(leaves: AsyncIterator[Leaf]) -> None:
    async for _ in leaves:
        pass


@pytest.mark.parametrize(
    ("text", "instant"),
    [
        ("2026-11-27T14:02:00Z", datetime(2026, 11, 27, 14, 2, tzinfo=UTC)),
        ("2026-11-27T15:02:00.5+01:00", datetime(2026, 11, 27, 14, 2, 0, 500000, tzinfo=UTC)),
        ("2026-11-27", datetime(2026, 11, 27, tzinfo=UTC)),
    ],
)
def test_instants_are_aware_and_in_utc(text: str, instant: datetime) -> None:
    parsed = parse_instant(text)
    assert parsed == instant and parsed.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("2026-11-27T14:02:00", "has no UTC offset"),
        ("yesterday", "is not an ISO-8601 instant"),
        ("", "is not an ISO-8601 instant"),
    ],
)
def test_ambiguous_or_bad_instants_are_refused(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_instant(text)


def test_days_are_yyyy_mm_dd_only() -> None:
    assert parse_day("2026-11-27") == date(2026, 11, 27)
    for bad in ("2026-11-31", "20261127", "2026-11-27T00:00:00Z", "x"):
        with pytest.raises(ValueError, match="is not a day"):
            parse_day(bad)


@pytest.mark.parametrize("page_size", [1, 2, 3, 4, 7, 100])
async def test_paging_by_recording_time_orders_ties_and_loses_nothing(page_size: int) -> None:
    # Instants with 1, 3, 1, 5 and 2 entries, stored in a scrambled order.
    counts = [1, 3, 1, 5, 2]
    leaves = [
        Leaf(T0 + timedelta(seconds=i), f"job-{(7 * j) % 10}", j + 1, f"h{i}{j}")
        for i, n in enumerate(counts)
        for j in range(n)
    ]
    stored = list(reversed(leaves))
    reads: list[int] = []

    async def page_after(after: datetime, inclusive: bool, until: datetime) -> list[Leaf]:
        hits = [
            x for x in stored if (x.recorded_at >= after if inclusive else x.recorded_at > after)
        ]
        hits = sorted((x for x in hits if x.recorded_at < until), key=lambda x: x.recorded_at)
        reads.append(len(hits[:page_size]))
        return hits[:page_size]

    async def all_at(at: datetime) -> list[Leaf]:
        return [x for x in stored if x.recorded_at == at]

    for since, until in [
        (T0, T0 + timedelta(minutes=1)),
        (T0 + timedelta(seconds=1), T0 + timedelta(seconds=4)),
    ]:
        got = [x async for x in by_recording_time(page_after, all_at, since, until, page_size)]
        wanted = sorted(
            (x for x in leaves if since <= x.recorded_at < until), key=lambda x: x.order
        )
        assert got == wanted
    assert max(reads) <= page_size


async def test_verify_anchors_with_nothing_anchored_reads_only(backend: Backend) -> None:
    await fill(backend.log)
    clock = FixedClock(datetime(2026, 11, 27, 1, tzinfo=UTC))
    assert await verify_anchors(backend.log, backend.anchors, backend.anchors, clock) == []
    assert await backend.anchors.list_anchors() == []  # and no collection / table was needed

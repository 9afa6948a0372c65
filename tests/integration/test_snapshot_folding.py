"""Snapshot folding on the real SQL log and projections (SQLite and PostgreSQL), and on the
in-memory fakes alike: a snapshot the log disagrees with is never used, and a long run with
snapshots in play still projects exactly what a rebuild from the log proves."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import delete, update

from app.adapters.log_entries import chain_entry, entry_fields
from app.adapters.memory_log import InMemoryEventLog
from app.adapters.memory_store import InMemoryProjectionStore
from app.adapters.sql_log import SqlEventLog, events_table
from app.adapters.sql_rebuild import SqlRebuildTables
from app.adapters.sql_schema import make_engine, migrate
from app.adapters.sql_store import SqlProjectionStore
from app.domain.events import Completed, Failed, Heartbeat, JobEvent, Reserved
from app.domain.machine import fold
from app.ports import EventLog, ProjectionStore
from app.services.projection import job_row
from app.services.rebuild import rebuild
from app.services.snapshots import FoldCounts, fold_jobs
from app.services.tracking import Tracker, fold_history
from tests.unit.test_snapshots import _reports
from tests.unit.test_tracking_service import POLICY, FakeClock, env, submitted

pytestmark = pytest.mark.integration


@dataclass
class Backend:
    log: EventLog
    store: ProjectionStore
    url: str | None = None

    async def rewrite(self, job: str, seq: int, event: JobEvent) -> None:
        """Entry ``seq`` replaced behind the adapter by ``event``, chained (hashed) as if real."""
        [before, entry] = (await self.log.read_job_raw(job))[seq - 2 : seq]
        forged = chain_entry(event, entry.recorded_at, before.seq, before.hash)
        if isinstance(self.log, InMemoryEventLog):
            self.log._jobs[job][seq - 1] = forged
            return
        c = events_table.c
        where = (c.job_id == job) & (c.seq == seq)
        await self._sql(update(events_table).where(where).values(entry_fields(forged)))

    async def cut(self, job: str, keep: int) -> None:
        """The log as a restore from before its entries after ``keep`` left it."""
        if isinstance(self.log, InMemoryEventLog):
            del self.log._jobs[job][keep:]
            return
        c = events_table.c
        await self._sql(delete(events_table).where((c.job_id == job) & (c.seq > keep)))

    async def _sql(self, statement: Any) -> None:
        assert self.url is not None
        engine = make_engine(self.url)
        try:
            async with engine.begin() as conn:
                await conn.execute(statement)
        finally:
            await engine.dispose()


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def url(request: pytest.FixtureRequest) -> str | None:
    if request.param == "memory":
        return None
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url"))


@pytest.fixture
async def backend(url: str | None) -> AsyncIterator[Backend]:
    if url is None:
        yield Backend(InMemoryEventLog(), InMemoryProjectionStore())
        return
    await migrate(url)
    log, store = SqlEventLog(url), SqlProjectionStore(url)
    try:
        yield Backend(log, store, url)
    finally:
        await store.close()
        await log.close()


@pytest.mark.parametrize("damage", ["edited", "log behind"])
async def test_a_snapshot_the_log_disagrees_with_is_never_used(
    backend: Backend, damage: str
) -> None:
    tracker = Tracker(backend.log, backend.store, POLICY, FakeClock())
    beats = [Heartbeat(**env("j"), node_id="n") for _ in range(5)]
    opening = [submitted("j"), Reserved(**env("j"), node_id="n"), *beats]
    await tracker.record([*opening, Completed(**env("j"), node_id="n")])
    [snapshot] = (await backend.store.snapshots(["j"])).values()
    assert snapshot.seq == 8
    if damage == "edited":  # the completion turned into a failure: another state
        failure = Failed(**env("j"), node_id="n", error_code="oom", retryable=True)
        await backend.rewrite("j", 8, failure)
    else:
        await backend.cut("j", 6)
    counts = FoldCounts()
    folds = await fold_jobs(backend.log, backend.store, ["j"], POLICY, counts)
    history = await backend.log.read_job("j")
    assert folds["j"].state == fold(history, skew_tolerance=POLICY.clock_skew_tolerance)
    assert folds["j"].events == history
    assert counts == FoldCounts(whole=1, refused=1, events=len(history))
    assert folds["j"].state.status == ("cooling_down" if damage == "edited" else "reserved")
    await tracker.record([Heartbeat(**env("j"), node_id="n")])  # settled whole again
    assert (tracker.folds.refused, tracker.folds.whole) == (1, 2)
    if damage == "edited":  # a new entry: projected from the whole (edited) log, with a snapshot
        history = await backend.log.read_job("j")
        assert await backend.store.get_job("j") == job_row(fold_history(history, POLICY), POLICY)
        assert [s.seq for s in (await backend.store.snapshots(["j"])).values()] == [9]


@pytest.mark.parametrize("url", ["sqlite", "postgresql"], indirect=True)
async def test_a_long_run_with_snapshots_rebuilds_to_the_same_rows(backend: Backend) -> None:
    clock = FakeClock()
    tracker = Tracker(backend.log, backend.store, POLICY, clock)
    rng = random.Random(7)
    jobs = [f"j{n}" for n in range(12)]
    await tracker.record([e for j in jobs for e in (submitted(j), Reserved(**env(j), node_id="n"))])
    for _ in range(30):
        batch: list[JobEvent] = []
        for job in rng.sample(jobs, 5):
            row = await backend.store.get_job(job)
            assert row is not None
            batch += _reports(rng, job, row.attempt)
        await tracker.record(batch)
        clock.at += timedelta(seconds=rng.choice([1, 20, 70]))
        await tracker.fire_due_timers()
    assert tracker.folds.refused == 0 and tracker.folds.from_snapshot > 100
    assert tracker.folds.events == await backend.log.count(), "each event folded once"
    assert backend.url is not None
    target = SqlRebuildTables(backend.url)
    try:
        report = await rebuild(backend.log, target, POLICY, dry_run=True)
    finally:
        await target.close()
    assert report.equal and report.jobs_rebuilt == len(jobs), report.first_differences

"""Snapshot folding on the in-memory fakes: a settle folds the events after a job's snapshot, and
a snapshot the log disagrees with is never used (tests/integration/test_snapshot_folding.py
holds the same to the SQL stores)."""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.adapters.memory_log import InMemoryEventLog, chain_entry
from app.adapters.memory_store import InMemoryProjectionStore
from app.domain.chain import RecordedEvent
from app.domain.events import Completed, Failed, Heartbeat, JobEvent, Reserved
from app.domain.machine import fold
from app.domain.policy import Policy
from app.ports import AppendOutcome, JobSnapshot
from app.services.projection import AttemptsSoFar, advance_attempts, attempt_rows, job_row
from app.services.rebuild import rebuilt_update
from app.services.snapshots import FoldCounts, Folded, decode, encode, fold_jobs
from app.services.tracking import Tracker, fold_history
from tests.unit import factories as f
from tests.unit.test_tracking_service import POLICY, T0, FakeClock, env, submitted


class CountingLog(InMemoryEventLog):
    """The real in-memory log, noting what each read asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.reads_from: list[dict[str, int]] = []
        self.whole_reads: list[list[str]] = []

    async def read_jobs_from(self, starts: Mapping[str, int]) -> dict[str, list[RecordedEvent]]:
        self.reads_from.append(dict(starts))
        return await super().read_jobs_from(starts)

    async def read_jobs(self, job_ids: Sequence[str]) -> dict[str, list[RecordedEvent]]:
        self.whole_reads.append(list(job_ids))
        return await super().read_jobs(job_ids)


def beats(job: str, count: int) -> list[JobEvent]:
    return [Heartbeat(**env(job), node_id="n") for _ in range(count)]


@pytest.fixture
def rig() -> tuple[Tracker, CountingLog, InMemoryProjectionStore, FakeClock]:
    log, store, clock = CountingLog(), InMemoryProjectionStore(), FakeClock()
    return Tracker(log, store, POLICY, clock), log, store, clock


async def test_each_settle_folds_only_the_events_after_the_snapshot(rig) -> None:  # type: ignore[no-untyped-def]
    tracker, log, store, clock = rig
    await tracker.record([submitted("j"), Reserved(**env("j"), node_id="n")])
    for _ in range(20):
        await tracker.record(beats("j", 50))
    assert await log.count() == 1002
    assert tracker.folds == FoldCounts(from_snapshot=20, whole=1, refused=0, events=1002)
    [snapshot] = (await store.snapshots(["j"])).values()
    assert snapshot.seq == 1002
    assert log.reads_from == [], "each batch folded the snapshot and the entries it appended"
    await tracker.record(beats("j", 3))
    assert log.reads_from == []
    await log.append_many(beats("j", 2), clock.now())  # entries no settle has seen
    await tracker.record(beats("j", 1))
    assert log.reads_from == [{"j": 1005}], "from the snapshot's entry, not from seq 1"
    assert log.whole_reads == [] and tracker.folds.events == 1008
    state = fold_history(await log.read_job("j"), POLICY)
    assert await store.get_job("j") == job_row(state, POLICY)


async def test_decisions_are_folded_as_appended_without_reading_them_back(rig) -> None:  # type: ignore[no-untyped-def]
    tracker, log, store, clock = rig
    await tracker.record([submitted("j"), Reserved(**env("j"), node_id="n"), *beats("j", 30)])
    log.reads_from.clear()
    clock.at = T0 + timedelta(minutes=5)  # the 60 s lease ran out: expired, then cooling down
    assert await tracker.fire_due_timers() == 1
    assert log.reads_from == [{"j": 32}]  # the snapshot's entry; the expiry is folded as appended
    clock.at += timedelta(minutes=5)  # cooldown over: retried
    assert await tracker.fire_due_timers() == 1
    history = await log.read_job("j")
    assert [e.event.type for e in history[-2:]] == ["expired", "retried"]
    assert log.whole_reads == [] and tracker.folds.events == len(history)
    assert await store.get_job("j") == job_row(fold_history(history, POLICY), POLICY)
    assert await store.get_attempts("j") == rebuilt_update(history, POLICY).attempts


class RivalLog(CountingLog):
    """A log another writer appends to just before the tracker's decisions land: the rival's
    own event first, or the very same decisions (a tracker that decided them too)."""

    def __init__(self, rival: str) -> None:
        super().__init__()
        self.rival = rival

    async def append_many(
        self, events: Sequence[JobEvent], recorded_at: datetime
    ) -> list[AppendOutcome]:
        if any(e.type == "expired" for e in events):
            first = events if self.rival == "same decisions" else beats(events[0].job_id, 1)
            await super().append_many(first, recorded_at)
        return await super().append_many(events, recorded_at)


@pytest.mark.parametrize("rival", ["an event first", "same decisions"])
async def test_decisions_another_writer_got_between_are_read_back(rival: str) -> None:
    log, store, clock = RivalLog(rival), InMemoryProjectionStore(), FakeClock()
    tracker = Tracker(log, store, POLICY, clock)
    await tracker.record([submitted("j"), Reserved(**env("j"), node_id="n"), *beats("j", 30)])
    log.reads_from.clear()
    clock.at = T0 + timedelta(minutes=5)
    assert await tracker.fire_due_timers() == 1
    assert log.reads_from == [{"j": 32}, {"j": 33}]  # the snapshot's entry; then the log after it
    history = await log.read_job("j")
    assert len(history) == (34 if rival == "an event first" else 33)
    assert await store.get_job("j") == job_row(fold_history(history, POLICY), POLICY)


def _edit(log: InMemoryEventLog, job: str, seq: int, event: JobEvent) -> None:
    """White-box, as someone editing the store could: entry ``seq`` rewritten, hash and all."""
    entries = log._jobs[job]
    before = entries[seq - 2]
    entries[seq - 1] = chain_entry(event, entries[seq - 1].recorded_at, before.seq, before.hash)


@pytest.mark.parametrize("damage", ["edited", "log behind", "unreadable", "other tolerance"])
async def test_a_snapshot_the_log_disagrees_with_is_never_used(
    rig,  # type: ignore[no-untyped-def]
    damage: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    tracker, log, store, _ = rig
    opening = [submitted("j"), Reserved(**env("j"), node_id="n"), *beats("j", 5)]
    await tracker.record([*opening, Completed(**env("j"), node_id="n")])
    [snapshot] = (await store.snapshots(["j"])).values()
    assert snapshot.seq == 8
    policy = POLICY
    if damage == "edited":  # the completion turned into a failure: another state
        _edit(log, "j", 8, Failed(**env("j"), node_id="n", error_code="oom", retryable=True))
    elif damage == "log behind":  # a log restored from before the last entries
        del log._jobs["j"][6:]
    elif damage == "unreadable":  # white-box: another version's body, say
        store._snapshots["j"] = replace(snapshot, body=snapshot.body.replace("status", "statut"))
    else:
        policy = Policy.from_toml("clock_skew_tolerance_seconds = 60\n[defaults]\nmax_attempts = 2")
    counts = FoldCounts()
    with caplog.at_level(logging.INFO, logger="jobtrail.snapshots"):
        folds = await fold_jobs(log, store, ["j"], policy, counts)
    history = await log.read_job("j")
    kept = decode("j", snapshot, history[7:8], POLICY)
    assert folds["j"].state == fold(history, skew_tolerance=policy.clock_skew_tolerance)
    assert folds["j"].events == history, "folded from the log's first entry"
    assert counts == FoldCounts(whole=1, refused=1, events=len(history))
    [record] = caplog.records
    assert "snapshot of job j at seq 8 not used" in record.getMessage()
    suspicious = damage in ("edited", "log behind")
    assert record.levelno == (logging.WARNING if suspicious else logging.INFO)
    if damage == "edited":
        assert isinstance(kept, str) and folds["j"].state.status == "cooling_down"
    if damage == "log behind":
        assert folds["j"].state.last_seq == 6


async def test_a_long_run_projects_what_a_rebuild_of_the_log_projects(rig) -> None:  # type: ignore[no-untyped-def]
    tracker, log, store, clock = rig
    rng = random.Random(12)
    jobs = [f"j{n}" for n in range(12)]
    await tracker.record([e for j in jobs for e in (submitted(j), Reserved(**env(j), node_id="n"))])
    for _ in range(40):
        batch: list[JobEvent] = []
        for job in rng.sample(jobs, 5):
            row = await store.get_job(job)
            assert row is not None
            batch += _reports(rng, job, row.attempt)
        await tracker.record(batch)
        clock.at += timedelta(seconds=rng.choice([1, 20, 70]))
        await tracker.fire_due_timers()
    assert tracker.folds.refused == 0 and tracker.folds.from_snapshot > 200
    assert tracker.folds.events == await log.count(), "each event folded once"
    for job in jobs:
        history = await log.read_job(job)
        rebuilt = rebuilt_update(history, POLICY)
        assert await store.get_job(job) == rebuilt.job
        assert await store.get_attempts(job) == list(rebuilt.attempts)
        timers = [
            t for t in await store.due_timers(T0 + timedelta(days=30), 100) if t.job_id == job
        ]
        assert timers == ([rebuilt.timer] if rebuilt.timer else [])


def _reports(rng: random.Random, job: str, attempt: int) -> list[JobEvent]:
    """What a node might report next (or too late, or twice): heartbeats, a reservation, an end."""
    kind = rng.choice(["heartbeats", "reserved", "failed", "completed"])
    if kind == "heartbeats":
        return [Heartbeat(**env(job, attempt), node_id="n") for _ in range(3)]
    if kind == "reserved":
        return [Reserved(**env(job, attempt), node_id="n")]
    if kind == "failed":
        retryable = rng.random() < 0.8
        return [Failed(**env(job, attempt), node_id="n", error_code="oom", retryable=retryable)]
    return [Completed(**env(job, attempt), node_id="n")]


@given(f.recorded_histories(min_size=1, max_size=30), st.data())
def test_a_snapshot_at_any_cut_then_the_rest_is_the_whole_fold(
    history: list[RecordedEvent], data: st.DataObject
) -> None:
    tolerance = POLICY.clock_skew_tolerance
    cut = data.draw(st.integers(min_value=1, max_value=len(history)))
    head, rest = history[:cut], history[cut:]
    head_rows, attempts = advance_attempts(f.JOB, AttemptsSoFar(), head)
    folded = Folded(fold(head, skew_tolerance=tolerance), attempts)
    snapshot = encode(folded, "h" * 64, POLICY)
    assert snapshot is not None and snapshot.seq == cut
    tip = replace(head[-1], hash="h" * 64)
    loaded = decode(f.JOB, snapshot, [tip, *rest], POLICY)
    assert loaded == folded, "the state and attempts round-trip exactly"
    assert isinstance(loaded, Folded)
    again = encode(loaded, "h" * 64, POLICY)
    assert again is not None and again.body == snapshot.body  # offsets, floats: all kept
    assert fold(rest, loaded.state, tolerance) == fold(history, skew_tolerance=tolerance)
    rest_rows, _ = advance_attempts(f.JOB, loaded.attempts, rest)
    stored = {row.attempt: row for row in head_rows} | {row.attempt: row for row in rest_rows}
    assert [row for _, row in sorted(stored.items())] == attempt_rows(f.JOB, history)


def test_a_state_json_cannot_hold_gets_no_snapshot() -> None:
    # Events cannot carry a lone surrogate (pydantic refuses them); a state built otherwise can.
    state = replace(f.fold_events(f.submitted()), last_error_message="lone \ud800")
    assert encode(Folded(state), "h" * 64, POLICY) is None  # folded whole at each settle


def test_a_snapshot_of_another_job_or_seq_is_not_used() -> None:
    history = f.record_all([f.submitted(), f.reserved()])
    snapshot = encode(Folded(fold(history)), history[-1].hash, POLICY)
    assert snapshot is not None
    assert isinstance(decode(f.JOB, snapshot, history[1:], POLICY), Folded)
    assert isinstance(decode("other-job", snapshot, history[1:], POLICY), str)
    moved = JobSnapshot(1, history[0].hash, snapshot.body)  # names entry 1, holds seq 2's state
    assert (
        decode(f.JOB, moved, history, POLICY) == "the snapshot's state is not the job's at its seq"
    )

"""The ProjectionStore contract, held by the in-memory fake, SQLite and PostgreSQL alike."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import fields, replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from app.adapters.memory_store import InMemoryProjectionStore
from app.adapters.sql_schema import migrate
from app.adapters.sql_store import SqlProjectionStore
from app.ports import (
    AttemptRow,
    JobRow,
    JobSnapshot,
    OutboxMessage,
    ProjectionStore,
    ProjectionUnavailable,
    ProjectionUpdate,
    TimerRow,
    WriteRefused,
)
from tests import servers

T0 = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
PLUS_TWO = timezone(timedelta(hours=2))
Store = ProjectionStore
StoreFactory = Callable[..., Store]
NOT_NULL_JOB_FIELDS = {"job_id", "attempt", "anomalies", "last_seq"}
NULLABLE_JOB_FIELDS = [f.name for f in fields(JobRow) if f.name not in NOT_NULL_JOB_FIELDS]


def job(job_id: str = "job-1", last_seq: int = 1, **changes: Any) -> JobRow:
    row = JobRow(
        job_id=job_id,
        status="reserved",
        attempt=2,
        max_attempts=5,
        job_type="batch",
        model="llama-70b",
        priority="urgent",
        tenant="acme",
        pool="sla-eu",
        queue="jobs.urgent",
        node_id="node-7",
        last_error_code="OOM",
        last_error_message="out of memory: ünïcode ✓",
        terminal_reason=None,
        next_deadline_at=T0 + timedelta(minutes=5),
        deadline_kind="lease",
        anomalies=1,
        last_seq=last_seq,
        submitted_at=(T0 - timedelta(minutes=1)).astimezone(PLUS_TWO),
        updated_at=T0,
    )
    return replace(row, **changes)


def attempt(job_id: str, n: int, **changes: Any) -> AttemptRow:
    reserved_at = T0 + timedelta(seconds=n)
    row = AttemptRow(job_id, n, "sla-eu", "jobs.urgent", f"node-{n}", reserved_at, None, None, None)
    return replace(row, **changes)


def message(event_id: str, job_id: str = "job-1", **changes: Any) -> OutboxMessage:
    row = OutboxMessage(
        event_id=event_id,
        job_id=job_id,
        exchange="",
        routing_key="jobs.urgent",
        body=b'\x00\xff{"job_id": 1}\n\x80',
        headers={"x-jobtrail-job-id": job_id, "x-jobtrail-attempt": 3},
        priority=9,
        created_at=T0,
    )
    return replace(row, **changes)


def timer(job_id: str = "job-1", due_at: datetime = T0, kind: str = "lease") -> TimerRow:
    return TimerRow(job_id=job_id, due_at=due_at, kind=kind)


def full_update(job_id: str = "job-1", last_seq: int = 1) -> ProjectionUpdate:
    return ProjectionUpdate(
        job=job(job_id, last_seq),
        attempts=[attempt(job_id, 1), attempt(job_id, 2)],
        outbox=[message(f"{job_id}-ev-{last_seq}", job_id)],
        timer=timer(job_id),
    )


# One row with a None in a NOT NULL column, in each table in turn.
BROKEN = {
    "job": ProjectionUpdate(job=job("job-bad", attempt=None)),
    "attempt": ProjectionUpdate(job=job("job-bad"), attempts=[attempt("job-bad", 1, attempt=None)]),
    "outbox": ProjectionUpdate(job=job("job-bad"), outbox=[message("ev-bad", body=None)]),
    "timer": ProjectionUpdate(job=job("job-bad"), timer=timer("job-bad", kind=None)),  # type: ignore[arg-type]
}
REFUSED_BY_POSTGRES = {
    "too-long": attempt("job-1", 1, outcome="x" * 65),
    "wrong-type": attempt("job-1", 1, node_id=42),
    "not-a-datetime": attempt("job-1", 1, reserved_at="noon"),
}


async def collect(store: ProjectionStore) -> list[JobRow]:
    return [row async for row in store.all_jobs()]


async def seed_outbox(store: ProjectionStore, sizes: dict[str, int]) -> list[OutboxMessage]:
    """``sizes[job]`` messages per job (``<job>-<n>``), job by job in order; oldest first."""
    rows: list[OutboxMessage] = []
    for job_id, size in sizes.items():
        for n in range(size):
            at = T0 + timedelta(milliseconds=len(rows))
            rows.append(message(f"{job_id}-{n}", job_id=job_id, created_at=at))
    updates = [
        ProjectionUpdate(job=job(j), outbox=[m for m in rows if m.job_id == j]) for j in sizes
    ]
    await store.apply(updates)
    return rows


class ProjectionStoreContract:
    """Every ProjectionStore adapter passes these; subclasses provide ``make_store``."""

    @pytest.fixture
    def make_store(self) -> StoreFactory:
        raise NotImplementedError

    @pytest.fixture
    def store(self, make_store: StoreFactory) -> ProjectionStore:
        return make_store()

    async def test_apply_then_get_job_round_trips_every_field(self, store: Store) -> None:
        nones: dict[str, Any] = dict.fromkeys(NULLABLE_JOB_FIELDS)
        row, bare = job(), replace(job("bare", anomalies=0), **nones)
        await store.apply([ProjectionUpdate(job=row), ProjectionUpdate(job=bare)])
        stored = await store.get_job("job-1")
        assert stored == row
        assert await store.get_job("bare") == bare
        assert stored is not None
        for value in (stored.submitted_at, stored.updated_at, stored.next_deadline_at):
            assert value is not None
            assert value.utcoffset() == timedelta(0)  # aware UTC, microseconds kept

    async def test_unknown_job_has_no_row_and_no_attempts(self, store: Store) -> None:
        assert await store.next_timer_at() is None
        assert await store.get_job("nope") is None
        assert await store.get_attempts("nope") == []
        assert await store.get_checkpoint("nope") is None
        assert await store.projected_seqs(["nope"]) == {}

    @pytest.mark.parametrize("delta", [0, -1])
    async def test_a_stale_update_is_skipped_whole(self, store: Store, delta: int) -> None:
        await store.apply([full_update(last_seq=5)])
        stale = ProjectionUpdate(
            job=job(last_seq=5 + delta, status="completed", attempt=9),
            attempts=[attempt("job-1", 1, outcome="completed"), attempt("job-1", 3)],
            outbox=[message("stale-ev")],
            timer=None if delta else timer(due_at=T0 + timedelta(days=1), kind="ttl"),
        )
        await store.apply([stale])
        assert await store.get_job("job-1") == job(last_seq=5)
        assert await store.get_attempts("job-1") == [attempt("job-1", 1), attempt("job-1", 2)]
        assert [m.event_id for m in await store.pending_outbox(10)] == ["job-1-ev-5"]
        assert await store.due_timers(T0 + timedelta(days=2), 10) == [timer()]

    async def test_a_newer_update_overwrites_and_upserts(self, store: Store) -> None:
        await store.apply([full_update(last_seq=1)])
        newer = ProjectionUpdate(
            job=job(last_seq=2, status="cooling_down", node_id=None),
            attempts=[attempt("job-1", 4), attempt("job-1", 2, outcome="failed", error_code="X")],
        )
        await store.apply([newer])
        assert await store.get_job("job-1") == newer.job
        assert await store.get_attempts("job-1") == [
            attempt("job-1", 1),
            attempt("job-1", 2, outcome="failed", error_code="X"),
            attempt("job-1", 4),
        ]
        assert await store.projected_seqs(["job-1"]) == {"job-1": 2}

    async def test_a_snapshot_is_kept_with_its_job_row(self, store: Store) -> None:
        snapshot = JobSnapshot(2, "a" * 64, '{"state": "ünïcode ✓", "n": [1.5, null]}')
        newer = JobSnapshot(3, "b" * 64, "{}")
        await store.apply([ProjectionUpdate(job=job(last_seq=2), snapshot=snapshot)])
        await store.apply([ProjectionUpdate(job=job("job-2", last_seq=1))])
        assert await store.snapshots(["job-1", "job-2", "nope"]) == {"job-1": snapshot}
        stale = ProjectionUpdate(job=job(last_seq=2), snapshot=newer)  # skipped whole
        await store.apply([stale])
        assert await store.snapshots(["job-1"]) == {"job-1": snapshot}
        await store.apply([ProjectionUpdate(job=job(last_seq=3), snapshot=newer)])
        assert await store.snapshots(["job-1"]) == {"job-1": newer}
        await store.apply([ProjectionUpdate(job=job(last_seq=4))])  # a row without one clears it
        assert await store.snapshots(["job-1", "job-2"]) == {}
        assert await store.snapshots([]) == {}

    async def test_outbox_body_and_headers_round_trip(self, store: Store) -> None:
        sent = message("ev-1", created_at=T0.astimezone(PLUS_TWO))
        odd = message("ev-2", body=b"", headers={}, priority=None, created_at=T0 + timedelta(1))
        await store.apply([ProjectionUpdate(job=job(), outbox=[sent, odd])])
        pending = await store.pending_outbox(10)
        assert pending == [sent, odd]
        assert isinstance(pending[0].body, bytes)  # a memoryview would compare equal too
        assert pending[0].created_at is not None
        assert pending[0].created_at.utcoffset() == timedelta(0)

    async def test_outbox_insert_never_overwrites(self, store: Store) -> None:
        await store.apply([ProjectionUpdate(job=job(last_seq=1), outbox=[message("ev-1")])])
        again = ProjectionUpdate(job=job(last_seq=2), outbox=[message("ev-1", body=b"other")])
        await store.apply([again])
        assert await store.pending_outbox(10) == [message("ev-1")]
        await store.mark_published(["ev-1"], T0)
        await store.apply([ProjectionUpdate(job=job(last_seq=3), outbox=[message("ev-1")])])
        assert await store.pending_outbox(10) == []

    async def test_pending_outbox_and_mark_published(self, store: Store) -> None:
        late, early_b, early_a = (
            message("c", created_at=T0 + timedelta(seconds=1)),
            message("b", job_id="job-2", created_at=T0),
            message("a", job_id="job-2", created_at=T0),
        )
        first, second = (
            ProjectionUpdate(job("job-1"), outbox=[late]),
            ProjectionUpdate(job("job-2"), outbox=[early_b, early_a]),
        )
        await store.apply([first, second])
        assert await store.pending_outbox(10) == [early_a, early_b, late]
        assert await store.pending_outbox(2) == [early_a, early_b]
        await store.mark_published(["a", "c", "unknown"], T0)
        await store.mark_published(["a"], T0 + timedelta(hours=1))
        await store.mark_published([], T0)
        assert await store.pending_outbox(10) == [early_b]

    async def test_claims_take_whole_jobs_oldest_first(self, store: Store) -> None:
        rows = await seed_outbox(store, {"a": 3, "b": 2, "c": 1})
        hold = timedelta(seconds=30)
        first = await store.claim_outbox("t1", 4, T0, hold)
        assert first == rows[:4], "oldest first: a's three rows, then b's first"
        assert await store.claim_outbox("t2", 10, T0, hold) == [rows[5]], (
            "b is held by t1 (its first row): only c is free"
        )
        assert await store.claim_outbox("t2", 10, T0, hold) == [rows[5]], "t2 renews its own"
        await store.mark_published([m.event_id for m in first[:3]], T0)
        await store.claim_outbox("t1", 10, T0, hold)  # renews b-0, takes b-1 (c is t2's)
        await store.mark_published([rows[3].event_id], T0)
        assert await store.claim_outbox("t2", 10, T0, hold) == [rows[5]], (
            "b-1 stays t1's while t1 holds it, though b-0 is published"
        )

    async def test_a_job_held_by_one_owner_is_skipped_whole(self, store: Store) -> None:
        rows = await seed_outbox(store, {"a": 3, "b": 1})
        hold = timedelta(seconds=30)
        assert await store.claim_outbox("t1", 1, T0, hold) == [rows[0]], "a prefix of a"
        assert await store.claim_outbox("t2", 10, T0, hold) == [rows[3]], "never a-1 or a-2"
        later = message("a-new", job_id="a", created_at=T0 + timedelta(minutes=1))
        await store.apply([ProjectionUpdate(job=job("a", last_seq=9), outbox=[later])])
        assert await store.claim_outbox("t2", 10, T0, hold) == [rows[3]], "nor a row added since"
        await store.mark_published([rows[0].event_id], T0)
        taken = await store.claim_outbox("t2", 10, T0, hold)
        assert taken == [rows[1], rows[2], rows[3], later], "then the rest of a, in order"

    async def test_an_expired_claim_is_taken_over(self, store: Store) -> None:
        rows = await seed_outbox(store, {"a": 2})
        hold = timedelta(seconds=10)
        assert await store.claim_outbox("t1", 10, T0, hold) == rows
        assert await store.claim_outbox("t2", 10, T0 + hold - timedelta(seconds=1), hold) == []
        assert await store.claim_outbox("t2", 10, T0 + hold, hold) == rows
        assert await store.claim_outbox("t1", 10, T0 + hold, hold) == [], "now t2's"

    async def test_a_release_frees_only_the_owners_claims(self, store: Store) -> None:
        rows = await seed_outbox(store, {"a": 1, "b": 1})
        hold = timedelta(seconds=30)
        assert await store.claim_outbox("t1", 10, T0, hold) == rows
        await store.release_outbox("t2", [m.event_id for m in rows])  # not t2's to release
        assert await store.claim_outbox("t2", 10, T0, hold) == []
        await store.release_outbox("t1", [rows[0].event_id, "unknown"])
        await store.release_outbox("t1", [])
        assert await store.claim_outbox("t2", 10, T0, hold) == [rows[0]]

    async def test_a_published_row_is_never_claimed_again(self, store: Store) -> None:
        rows = await seed_outbox(store, {"a": 1, "b": 1})
        hold = timedelta(seconds=10)
        assert await store.claim_outbox("t1", 10, T0, hold) == rows
        await store.mark_published([rows[0].event_id], T0)
        await store.mark_published([rows[1].event_id], T0)  # marked by someone else: still
        await store.mark_published([rows[1].event_id], T0 + timedelta(hours=1))  # idempotent
        later = T0 + timedelta(days=1)
        assert await store.claim_outbox("t1", 10, later, hold) == []
        assert await store.claim_outbox("t2", 10, later, hold) == []
        await store.release_outbox("t1", [m.event_id for m in rows])
        assert await store.claim_outbox("t2", 10, later, hold) == []
        assert await store.pending_outbox(10) == []

    async def test_a_claim_skips_more_held_jobs_than_one_id_list_holds(self, store: Store) -> None:
        rows = await seed_outbox(store, {f"h{n:04d}": 1 for n in range(2100)} | {"free": 2})
        hold = timedelta(seconds=30)
        assert len(await store.claim_outbox("t1", 2100, T0, hold)) == 2100
        assert await store.claim_outbox("t2", 5000, T0, hold) == rows[-2:]

    async def test_concurrent_claims_are_disjoint_and_keep_jobs_whole(self, store: Store) -> None:
        sizes = {f"j{n:02d}": 1 + n % 3 for n in range(60)}
        rows = await seed_outbox(store, sizes)
        owners = [f"t{n}" for n in range(4)]
        hold = timedelta(seconds=30)
        claimed: list[str] = []
        while len(claimed) < len(rows):
            rounds = await asyncio.gather(*(store.claim_outbox(o, 5, T0, hold) for o in owners))
            assert any(rounds), "something is left to claim"
            holder: dict[str, str] = {}  # job -> the one owner holding its rows this round
            for owner, taken in zip(owners, rounds, strict=True):
                for m in taken:
                    assert holder.setdefault(m.job_id, owner) == owner, f"{m.job_id} split"
                claimed += [m.event_id for m in taken]
            # As relays do: publish (here: mark) what was claimed, then claim again.
            await asyncio.gather(
                *(store.mark_published([m.event_id for m in t], T0) for t in rounds)
            )
        assert sorted(claimed) == sorted(m.event_id for m in rows), "each row claimed once"
        order = {event_id: n for n, event_id in enumerate(claimed)}
        for job_id in sizes:
            ids = [m.event_id for m in rows if m.job_id == job_id]
            assert sorted(ids, key=order.__getitem__) == ids, f"{job_id} claimed out of order"

    async def test_outbox_created_at_defaults_to_now(self, store: Store) -> None:
        before = datetime.now(UTC)
        await store.apply([ProjectionUpdate(job=job(), outbox=[message("ev", created_at=None)])])
        [pending] = await store.pending_outbox(10)
        assert pending.created_at is not None
        assert before - timedelta(seconds=1) <= pending.created_at <= datetime.now(UTC)
        assert pending == message("ev", created_at=pending.created_at)

    async def test_due_timers_respects_now_order_and_limit(self, store: Store) -> None:
        timers = {
            "job-a": timer("job-a", T0 + timedelta(seconds=5), "ttl"),
            "job-b": timer("job-b", T0 - timedelta(seconds=10), "lease"),
            "job-c": timer("job-c", T0 - timedelta(seconds=5), "cooldown"),
            "job-d": timer("job-d", T0, "lease"),
        }
        await store.apply([ProjectionUpdate(job=job(j), timer=t) for j, t in timers.items()])
        expected = [timers["job-b"], timers["job-c"], timers["job-d"]]
        assert await store.due_timers(T0, 10) == expected
        assert await store.due_timers(T0.astimezone(PLUS_TWO), 10) == expected
        assert await store.due_timers(T0, 1) == [timers["job-b"]]
        assert await store.due_timers(T0 - timedelta(hours=1), 10) == []
        assert await store.next_timer_at() == T0 - timedelta(seconds=10)

    async def test_a_timer_is_replaced_and_none_deletes_it(self, store: Store) -> None:
        await store.apply([ProjectionUpdate(job=job(last_seq=1), timer=timer())])
        later = timer(due_at=T0 + timedelta(minutes=3), kind="cooldown")
        await store.apply([ProjectionUpdate(job=job(last_seq=2), timer=later)])
        assert await store.due_timers(T0 + timedelta(hours=1), 10) == [later]
        assert await store.next_timer_at() == later.due_at
        await store.apply([ProjectionUpdate(job=job(last_seq=3), timer=None)])
        assert await store.due_timers(T0 + timedelta(hours=1), 10) == []
        assert await store.next_timer_at() is None

    async def test_the_next_claimable_moment_counts_claims(self, store: Store) -> None:
        now = T0 + timedelta(hours=1)  # every timer here is due by then
        assert await store.next_claimable_at(now) is None
        hold = timedelta(seconds=10)
        five = T0 + timedelta(seconds=5)
        await store.apply(
            [ProjectionUpdate(job=job(j), timer=timer(j, at)) for j, at in (("a", T0), ("b", five))]
        )
        assert await store.next_claimable_at(now) == T0
        assert [t.job_id for t in await store.claim_due_timers(T0, 10, hold)] == ["a"]
        assert await store.next_claimable_at(now) == five, "a is held: b comes first"
        assert [t.job_id for t in await store.claim_due_timers(five, 10, hold)] == ["b"]
        assert await store.next_claimable_at(now) == T0 + hold, "a's claim ends first"
        await store.apply([ProjectionUpdate(job=job("a", last_seq=2), timer=None)])
        assert await store.next_claimable_at(now) == five + hold
        await store.apply([ProjectionUpdate(job=job("b", last_seq=2), timer=timer("b", five))])
        assert await store.next_claimable_at(now) == five, "a new timer row is not claimed"

    async def test_claims_count_on_timers_due_by_now(self, store: Store) -> None:
        later = T0 + timedelta(minutes=1)
        await store.apply(
            [
                ProjectionUpdate(job=job(j), timer=timer(j, at))
                for j, at in (("a", T0), ("b", later))
            ]
        )
        # A tracker whose clock runs a minute ahead holds both for an hour.
        assert len(await store.claim_due_timers(later, 10, timedelta(hours=1))) == 2
        assert await store.next_claimable_at(later) == later + timedelta(hours=1)
        assert await store.next_claimable_at(T0) == later, (
            "b is not due by T0: its claim is left out"
        )

    async def test_claimed_timers_are_skipped_until_the_claim_ends(self, store: Store) -> None:
        hold = timedelta(seconds=10)
        await store.apply([ProjectionUpdate(job=job(j), timer=timer(j, T0)) for j in ("a", "b")])
        first = await store.claim_due_timers(T0, 1, hold)
        assert [t.job_id for t in first] == ["a"]
        assert [t.job_id for t in await store.claim_due_timers(T0, 10, hold)] == ["b"]
        assert await store.claim_due_timers(T0 + hold - timedelta(seconds=1), 10, hold) == []
        assert [t.job_id for t in await store.claim_due_timers(T0 + hold, 10, hold)] == ["a", "b"]
        await store.apply([ProjectionUpdate(job=job("a", last_seq=2), timer=timer("a", T0))])
        assert [t.job_id for t in await store.claim_due_timers(T0 + hold, 10, hold)] == ["a"]

    async def test_checkpoints_upsert_and_read(self, store: Store) -> None:
        assert await store.get_checkpoint("partition-0") is None
        await store.apply([], {"partition-0": "17", "partition-1": "3"})
        await store.apply([full_update()], {"partition-0": "18"})
        assert await store.get_checkpoint("partition-0") == "18"
        assert await store.get_checkpoint("partition-1") == "3"
        assert await store.get_job("job-1") is not None

    async def test_many_updates_in_one_apply(self, store: Store) -> None:
        updates = [full_update(f"job-{i:04d}", last_seq=i + 1) for i in range(500)]
        await store.apply(updates, {"bulk": "500"})
        ids = [u.job.job_id for u in updates]
        assert await store.projected_seqs([*ids, "missing"]) == {
            u.job.job_id: u.job.last_seq for u in updates
        }
        assert await collect(store) == [u.job for u in updates]
        assert len(await store.pending_outbox(1000)) == 500
        assert len(await store.due_timers(T0, 1000)) == 500
        assert await store.get_attempts("job-0499") == list(updates[-1].attempts)

    async def test_updates_of_one_job_apply_in_order(self, store: Store) -> None:
        first = ProjectionUpdate(
            job=job(last_seq=2), attempts=[attempt("job-1", 1)], outbox=[message("ev-2")]
        )
        second = ProjectionUpdate(
            job=job(last_seq=3, status="cooling_down"),
            attempts=[attempt("job-1", 1, outcome="failed"), attempt("job-1", 2)],
            outbox=[message("ev-3")],
            timer=timer(kind="cooldown"),
        )
        stale = ProjectionUpdate(job=job(last_seq=1), outbox=[message("ev-1")], timer=timer())
        await store.apply([first, second, stale])
        assert await store.get_job("job-1") == second.job
        assert await store.get_attempts("job-1") == list(second.attempts)
        assert [m.event_id for m in await store.pending_outbox(10)] == ["ev-2", "ev-3"]
        assert await store.due_timers(T0, 10) == [timer(kind="cooldown")]

    @pytest.mark.parametrize("broken", BROKEN.values(), ids=BROKEN.keys())
    async def test_invalid_row_fails_batch(self, store: Store, broken: ProjectionUpdate) -> None:
        await store.apply([full_update("job-old", last_seq=1)], {"cp": "1"})
        batch = [full_update("job-old", last_seq=2), full_update("job-new"), broken]
        with pytest.raises(ValueError, match=r"\S"):
            await store.apply(batch, {"cp": "2"})
        assert await store.get_job("job-old") == job("job-old", last_seq=1)
        assert await store.get_job("job-new") is None
        assert await store.get_job("job-bad") is None
        assert await store.get_attempts("job-new") == []
        assert [m.event_id for m in await store.pending_outbox(10)] == ["job-old-ev-1"]
        assert [t.job_id for t in await store.due_timers(T0, 10)] == ["job-old"]
        assert await store.get_checkpoint("cp") == "1"
        await store.apply([full_update("job-new")])  # the store is still usable
        assert await store.get_job("job-new") == job("job-new")

    async def test_rows_of_another_job_are_rejected(self, store: Store) -> None:
        with pytest.raises(ValueError, match="another job"):
            await store.apply([ProjectionUpdate(job=job(), attempts=[attempt("job-2", 1)])])
        with pytest.raises(ValueError, match="another job"):
            await store.apply([ProjectionUpdate(job=job(), timer=timer("job-2"))])
        assert await store.get_job("job-1") is None

    @pytest.mark.parametrize("page_size", [3, 4])
    async def test_all_jobs_pages_by_job_id(self, make_store: StoreFactory, page_size: int) -> None:
        store = make_store(page_size=page_size)
        assert await collect(store) == []
        ids = ["b", "A", "a", "c-1", "c_2", "c.3", "Z", "~", "0"]  # 9: whole pages of 3, not of 4
        await store.apply([ProjectionUpdate(job=job(j)) for j in ids])
        assert await collect(store) == [job(j) for j in sorted(ids)]

    @pytest.mark.parametrize("existing", [False, True], ids=["new-jobs", "existing-jobs"])
    async def test_concurrent_applies_keep_the_newest(self, store: Store, existing: bool) -> None:
        def update(job_id: str, seq: int) -> ProjectionUpdate:
            return ProjectionUpdate(
                job=job(job_id, last_seq=seq),
                attempts=[attempt(job_id, 1, node_id=f"seq-{seq}")],
                timer=timer(job_id, T0 + timedelta(seconds=seq)),
            )

        ids = [f"race-{i}" for i in range(10)]
        if existing:
            await store.apply([update(j, 1) for j in ids])
        batches = [[update(j, seq) for j in ids] for seq in (3, 5, 4, 2)]
        await asyncio.gather(*(store.apply(batch) for batch in batches))
        for job_id in ids:
            assert await store.get_job(job_id) == job(job_id, last_seq=5)
            assert await store.get_attempts(job_id) == [attempt(job_id, 1, node_id="seq-5")]
        due = await store.due_timers(T0 + timedelta(1), 100)
        assert {t.due_at for t in due} == {T0 + timedelta(seconds=5)}


class TestInMemoryProjectionStore(ProjectionStoreContract):
    @pytest.fixture
    def make_store(self) -> StoreFactory:
        return lambda **_: InMemoryProjectionStore()


class SqlContract(ProjectionStoreContract):
    """The contract on a migrated database; subclasses provide ``url`` and ``unreachable_url``."""

    @pytest.fixture
    async def make_store(self, url: str) -> AsyncIterator[StoreFactory]:
        await migrate(url)
        stores: list[SqlProjectionStore] = []

        def factory(**options: Any) -> ProjectionStore:
            stores.append(SqlProjectionStore(url, **options))
            return stores[-1]

        yield factory
        for store in stores:
            await store.close()

    async def test_unreachable_raises_unavailable(self, unreachable_url: str) -> None:
        store = SqlProjectionStore(unreachable_url)
        try:
            with pytest.raises(ProjectionUnavailable):
                await store.get_job("job-1")
            with pytest.raises(ProjectionUnavailable):
                await store.apply([full_update()], {"cp": "1"})
            with pytest.raises(ProjectionUnavailable):
                await anext(store.all_jobs())
        finally:
            await store.close()


class TestSqliteProjectionStore(SqlContract):
    @pytest.fixture
    def url(self, sqlite_url: str) -> str:
        return sqlite_url

    @pytest.fixture
    def unreachable_url(self, tmp_path: Path) -> str:
        return f"sqlite+aiosqlite:///{tmp_path}/missing/dir/x.db"


@pytest.mark.integration
class TestPostgresProjectionStore(SqlContract):
    @pytest.fixture
    def url(self, pg_url: str) -> str:
        return pg_url

    @pytest.fixture
    def unreachable_url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{servers.free_port()}/jobtrail"

    async def test_an_unmigrated_database_raises_projection_unavailable(self, pg_url: str) -> None:
        store = SqlProjectionStore(pg_url)
        try:
            with pytest.raises(ProjectionUnavailable):
                await store.pending_outbox(10)
        finally:
            await store.close()

    @pytest.mark.parametrize("broken", REFUSED_BY_POSTGRES.values(), ids=REFUSED_BY_POSTGRES.keys())
    async def test_unstorable_value_is_rejected(self, store: Store, broken: AttemptRow) -> None:
        with pytest.raises(WriteRefused, match="rejected"):  # a refusal, never an outage
            await store.apply([ProjectionUpdate(job=job(), attempts=[broken])])
        assert await store.get_job("job-1") is None

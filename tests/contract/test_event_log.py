"""One contract for every EventLog adapter: memory, SQLite, PostgreSQL and MongoDB.

Each adapter is built with a tiny page size so every scan crosses several pages.
"""

from __future__ import annotations

import asyncio
import gc
import json
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from itertools import chain
from pathlib import Path
from typing import Any

import pytest
from pydantic import JsonValue
from pymongo import AsyncMongoClient, WriteConcern
from sqlalchemy import update
from sqlalchemy.ext.asyncio import create_async_engine

from app.adapters.anchor_store import MongoAnchorStore
from app.adapters.log_factory import open_event_log
from app.adapters.memory_log import InMemoryEventLog
from app.adapters.mongo_log import MongoEventLog
from app.adapters.sql_log import SqlEventLog, async_url, events_table
from app.domain.chain import GENESIS_HASH, ChainBreak, StoredEvent, verify_chain
from app.domain.events import Heartbeat, JobEvent, Submitted, canonical_json
from app.ports import AppendOutcome, AppendStatus, EventLog, LogUnavailable
from tests.servers import free_port

PAGE_SIZE = 4
T0 = datetime(2030, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
T0_MS = T0.replace(microsecond=123000)

Tamper = Callable[[str, int, str], Awaitable[None]]
Edit = Callable[[str, int, dict[str, Any]], Awaitable[None]]
"""Set stored fields of one entry (job_id, seq) directly in the store, behind the adapter."""

EDITS: dict[str, tuple[Any, str]] = {
    "event_id": (
        "00000000-0000-4000-8000-000000000000",
        "at seq 2: stored data names another job or event id",
    ),
    "job_id": ("job-9", "at seq 3: seq 3 where 2 was expected"),
    "seq": (7, "at seq 3: seq 3 where 2 was expected"),
    "type": ("completed", "at seq 2: stored type 'completed' is not the event's type 'heartbeat'"),
    "attempt": (2, "at seq 2: stored attempt 2 is not the event's attempt 1"),
    "occurred_at": (T0 - timedelta(days=1), "at seq 2: stored occurred_at 2030-05-05T07:08:09"),
    "recorded_at": (T0_MS + timedelta(hours=1), "at seq 2: hash does not match"),
    "prev_hash": ("e" * 64, "at seq 2: prev_hash does not match the previous entry's hash"),
    "hash": ("f" * 64, "at seq 2: hash does not match the entry's content"),
    "data": (None, "at seq 2: hash does not match the entry's content"),  # set from the entry
}
"""Each stored field of an entry, an edit of it, and what verify says of job-1 after it."""


_SUBMISSION = {"source": "cloud", "job_type": "sync", "model": "llama", "priority": "bulk"}
_PLACEMENT = {"tenant": "acme", "pool": "shared", "queue": "jobs.bulk"}


def _envelope(job_id: str, n: int = 0) -> dict[str, Any]:
    at = T0 + timedelta(seconds=n)
    return {"event_id": uuid.uuid4(), "job_id": job_id, "occurred_at": at, "attempt": 1}


def submitted(job_id: str, payload: JsonValue = None) -> Submitted:
    fields = _envelope(job_id) | _SUBMISSION | _PLACEMENT | {"payload": payload}
    return Submitted.model_validate(fields)


def heartbeat(job_id: str, n: int = 0) -> Heartbeat:
    return Heartbeat(**_envelope(job_id, n), source="node-7", node_id="node-7")


async def scan_raw(log: EventLog) -> list[StoredEvent]:
    return [entry async for entry in log.scan_raw()]


def chained(entries: list[StoredEvent]) -> list[tuple[object, ...]]:
    """What every adapter stores alike: all but occurred_at, kept at each store's precision."""
    return [
        (e.job_id, e.seq, e.event_id, e.recorded_at, e.prev_hash, e.hash, e.data, e.type, e.attempt)
        for e in entries
    ]


async def test_open_event_log_picks_the_adapter_by_scheme_and_connects_to_nothing() -> None:
    closed = free_port()
    expected = {
        f"mongodb://127.0.0.1:{closed}/jobtrail": MongoEventLog,
        "mongodb+srv://cluster.example.invalid/jobtrail": MongoEventLog,
        f"postgresql://postgres@127.0.0.1:{closed}/jobtrail": SqlEventLog,
        "sqlite+aiosqlite:////nonexistent-dir/jobtrail.db": SqlEventLog,
    }
    for url, adapter in expected.items():
        log = open_event_log(url)
        assert type(log) is adapter
        await log.close()


async def test_a_mongo_url_without_a_database_uses_jobtrail(mongo_base_url: str) -> None:
    # A URL naming its database is what every TestMongoEventLog test uses (see ``tamper``).
    log = open_event_log(f"{mongo_base_url}/?directConnection=true")
    event = submitted("job-factory")
    await log.append(event, T0)
    await log.close()
    admin: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(mongo_base_url)
    events = admin["jobtrail"]["events"]
    # Clean up: the default database is shared by the whole session.
    assert (await events.delete_one({"event_id": str(event.event_id)})).deleted_count == 1
    await admin.close()


class EventLogContract:
    """Every test here runs against every adapter; subclasses provide the ``log`` fixture."""

    writers = 8
    events_per_writer = 25

    async def test_first_append_gets_seq_1_and_genesis_prev_hash(self, log: EventLog) -> None:
        event = submitted("job-1")
        outcome = await log.append(event, T0)
        assert outcome == AppendOutcome(str(event.event_id), "job-1", AppendStatus.APPENDED, 1)
        await log.ensure_schema()  # idempotent: the fixture already ran it
        [entry] = await log.read_job_raw("job-1")
        assert (entry.seq, entry.prev_hash) == (1, GENESIS_HASH)
        assert entry.event_id == str(event.event_id)

    async def test_seqs_are_gapless_and_independent_per_job(self, log: EventLog) -> None:
        for n in range(5):
            assert (await log.append(heartbeat("job-a", n), T0)).seq == n + 1
            if n < 3:
                assert (await log.append(heartbeat("job-b", n), T0)).seq == n + 1
        assert [e.seq for e in await log.read_job("job-a")] == [1, 2, 3, 4, 5]
        assert [e.seq for e in await log.read_job("job-b")] == [1, 2, 3]
        assert await log.read_job("job-unknown") == []
        assert await log.count() == 8
        jobs = await log.read_jobs(["job-b", "job-unknown", "job-a", "job-b"])
        assert jobs == {job: await log.read_job(job) for job in ("job-b", "job-unknown", "job-a")}
        assert await log.read_jobs([]) == {}

    async def test_read_jobs_from_reads_each_job_from_its_own_seq(self, log: EventLog) -> None:
        await log.append_many([heartbeat("job-a", n) for n in range(6)], T0)
        await log.append_many([heartbeat("job-b", n) for n in range(3)], T0)
        whole = await log.read_jobs(["job-a", "job-b"])
        starts = {"job-b": 1, "job-a": 4, "job-unknown": 1, "job-beyond": 9}
        found = await log.read_jobs_from(starts)
        assert list(found) == list(starts)
        assert found["job-a"] == whole["job-a"][3:]  # entry 4 itself, with its stored hash
        assert [e.seq for e in found["job-a"]] == [4, 5, 6]
        assert found["job-b"] == whole["job-b"]
        assert found["job-unknown"] == found["job-beyond"] == []
        assert (await log.read_jobs_from({"job-a": 7}))["job-a"] == []  # past the tip
        assert await log.read_jobs_from({}) == {}

    async def test_read_jobs_from_reads_many_jobs_in_one_call(self, log: EventLog) -> None:
        jobs = [f"job-{n:04d}" for n in range(600)]  # more than one chunk of every adapter
        await log.append_many([heartbeat(job, n) for n in range(2) for job in jobs], T0)
        found = await log.read_jobs_from({job: 1 + n % 3 for n, job in enumerate(jobs)})
        assert [len(found[job]) for job in jobs] == [(2, 1, 0)[n % 3] for n in range(600)]
        assert all(e.job_id == job for job in jobs for e in found[job])

    async def test_an_appended_outcome_carries_the_entry_read_back_returns(
        self, log: EventLog
    ) -> None:
        first = submitted("job-1")
        [one] = await log.append_many([first], T0)
        outcomes = await log.append_many([heartbeat("job-1", 1), heartbeat("job-2", 1), first], T0)
        outcomes.append(await log.append(heartbeat("job-1", 2), T0 + timedelta(seconds=1)))
        stored = await log.read_jobs(["job-1", "job-2"])
        assert [one.entry, outcomes[0].entry, outcomes[3].entry] == stored["job-1"]
        assert [outcomes[1].entry] == stored["job-2"]
        assert outcomes[2].status is AppendStatus.DUPLICATE and outcomes[2].entry is None

    async def test_duplicate_changes_nothing_reports_stored_seq(self, log: EventLog) -> None:
        first = submitted("job-1")
        await log.append(first, T0)
        await log.append(heartbeat("job-1"), T0)
        before = await log.read_job_raw("job-1")
        again = await log.append(first, T0 + timedelta(hours=1))
        elsewhere = await log.append(first.model_copy(update={"job_id": "job-2"}), T0)
        expected = AppendOutcome(str(first.event_id), "job-1", AppendStatus.DUPLICATE, 1)
        assert again == expected
        assert elsewhere == expected
        assert await log.read_job_raw("job-1") == before
        assert await log.read_job_raw("job-2") == []
        assert await log.count() == 2

    async def test_chain_verifies_and_data_is_canonical_json(self, log: EventLog) -> None:
        events: list[JobEvent] = [submitted("job-1"), heartbeat("job-1", 1), heartbeat("job-1", 2)]
        for i, event in enumerate(events):
            await log.append(event, T0 + timedelta(seconds=i))
        raw = await log.read_job_raw("job-1")
        assert verify_chain("job-1", raw) is None
        assert [entry.data for entry in raw] == [canonical_json(event) for event in events]
        assert [entry.prev_hash for entry in raw[1:]] == [entry.hash for entry in raw[:-1]]
        assert [recorded.event for recorded in await log.read_job("job-1")] == events

    async def test_recorded_at_round_trips_as_aware_utc_ms(self, log: EventLog) -> None:
        local = T0.astimezone(timezone(timedelta(hours=5, minutes=30)))
        await log.append(submitted("job-1"), local)
        [raw] = await log.read_job_raw("job-1")
        [recorded] = await log.read_job("job-1")
        [scanned] = await scan_raw(log)
        for moment in (raw.recorded_at, recorded.recorded_at, scanned.recorded_at):
            assert moment == T0_MS
            assert moment.utcoffset() == timedelta(0)
            assert moment.microsecond == 123000

    async def test_read_job_until_keeps_entries_up_to_until(self, log: EventLog) -> None:
        for i in range(3):
            await log.append(heartbeat("job-1", i), T0 + timedelta(seconds=i))
        second = T0_MS + timedelta(seconds=1)

        async def seqs(until: datetime) -> list[int]:
            return [entry.seq for entry in await log.read_job("job-1", until=until)]

        assert await seqs(second) == [1, 2]
        assert await seqs(second.astimezone(timezone(timedelta(hours=-4)))) == [1, 2]
        assert await seqs(second - timedelta(microseconds=1)) == [1]
        assert await seqs(T0_MS - timedelta(milliseconds=1)) == []
        assert await seqs(T0 + timedelta(days=1)) == [1, 2, 3]

    async def test_scan_range_orders_by_time_then_job_then_seq_across_pages(
        self, log: EventLog
    ) -> None:
        jobs = ["job-b", "a.b", "job-a"]
        for n in range(4):  # instants T0, T0+1s, ...: several jobs share each instant
            for job in jobs:
                await log.append(heartbeat(job, n), T0 + timedelta(seconds=n))
        got = [(e.recorded_at, e.job_id, e.seq) async for e in log.scan_range(None, None)]
        assert got == sorted(got) and len(got) == 12 > PAGE_SIZE
        window = [
            (e.job_id, e.seq)
            async for e in log.scan_range(
                T0_MS + timedelta(seconds=1), T0_MS + timedelta(seconds=3)
            )
        ]
        assert window == [(job, seq) for seq in (2, 3) for job in sorted(jobs)]
        late = [e async for e in log.scan_range(T0_MS + timedelta(seconds=3), None)]
        assert [(e.job_id, e.seq) for e in late] == [(job, 4) for job in sorted(jobs)]

    async def test_scans_order_by_job_then_seq_across_pages(self, log: EventLog) -> None:
        # Byte order differs from natural-language collations on case and punctuation.
        jobs = ["job-b", "JOB-c", "a.b", "job-a", "job-a:1", "job-a.2"]
        assert [entry async for entry in log.scan()] == await scan_raw(log) == []
        for n in range(3):
            for job in jobs:
                await log.append(heartbeat(job, n), T0)
        expected = [(job, seq) for job in sorted(jobs) for seq in (1, 2, 3)]
        raw = await scan_raw(log)
        assert [(entry.job_id, entry.seq) for entry in raw] == expected
        assert [(entry.job_id, entry.seq) async for entry in log.scan()] == expected
        per_job = [entry for job in sorted(jobs) for entry in await log.read_job_raw(job)]
        assert raw == per_job
        assert await log.count() == len(expected) > 3 * PAGE_SIZE

    async def test_a_scan_resumes_after_a_job_across_pages(self, log: EventLog) -> None:
        # What a paged fleet query relies on: resume after the last job of the previous page.
        jobs = ["job-b", "JOB-c", "a.b", "job-a", "job-a:1", "job-a.2"]
        for n in range(3):
            for job in jobs:
                await log.append(heartbeat(job, n), T0)
        for after in [*jobs, "", "job-", "zzz"]:
            expected = [(job, seq) for job in sorted(jobs) if job > after for seq in (1, 2, 3)]
            scanned = [(e.job_id, e.seq) async for e in log.scan_raw(after_job=after)]
            assert scanned == expected, after

    async def test_append_many_equals_appending_one_by_one(self, log: EventLog) -> None:
        stored, b1 = submitted("job-a"), submitted("job-b")
        batch: list[JobEvent] = [heartbeat("job-a", 1), b1, stored, heartbeat("job-a", 2), b1]
        batch.append(heartbeat("job-a", 3))
        reference = InMemoryEventLog()
        for target in (log, reference):
            await target.append(stored, T0)
        outcomes = await log.append_many(batch, T0 + timedelta(seconds=1))
        assert [(o.job_id, o.status, o.seq) for o in outcomes] == [
            ("job-a", AppendStatus.APPENDED, 2),
            ("job-b", AppendStatus.APPENDED, 1),
            ("job-a", AppendStatus.DUPLICATE, 1),
            ("job-a", AppendStatus.APPENDED, 3),
            ("job-b", AppendStatus.DUPLICATE, 1),
            ("job-a", AppendStatus.APPENDED, 4),
        ]
        for event in batch:
            await reference.append(event, T0 + timedelta(seconds=1))
        for job in ("job-a", "job-b"):
            raw = await log.read_job_raw(job)
            assert chained(raw) == chained(await reference.read_job_raw(job))
            assert verify_chain(job, raw) is None
        assert await log.append_many([], T0) == []
        assert await log.count() == 5

    async def test_concurrent_writers_to_one_job_leave_no_gaps(self, log: EventLog) -> None:
        async def writer(w: int) -> list[tuple[str, AppendOutcome]]:
            done = []
            for i in range(self.events_per_writer):
                event = heartbeat("job-hot", w * 1000 + i)
                done.append((str(event.event_id), await log.append(event, T0)))
            return done

        results = list(chain(*await asyncio.gather(*map(writer, range(self.writers)))))
        total = self.writers * self.events_per_writer
        assert {outcome.status for _, outcome in results} == {AppendStatus.APPENDED}
        assert sorted(outcome.seq for _, outcome in results) == list(range(1, total + 1))
        raw = await log.read_job_raw("job-hot")
        assert [entry.seq for entry in raw] == list(range(1, total + 1))
        assert {entry.event_id: entry.seq for entry in raw} == {
            event_id: outcome.seq for event_id, outcome in results
        }
        assert verify_chain("job-hot", raw) is None

    async def test_concurrent_batches_keep_every_chain_intact(self, log: EventLog) -> None:
        jobs = ("job-x", "job-y")
        batches = [
            [heartbeat(jobs[i % 2], w * 100 + i) for i in range(self.events_per_writer // 2)]
            for w in range(self.writers // 2)
        ]
        results = await asyncio.gather(*(log.append_many(batch, T0) for batch in batches))
        for batch, outcomes in zip(batches, results, strict=True):
            assert {o.status for o in outcomes} == {AppendStatus.APPENDED}
            assert [o.event_id for o in outcomes] == [str(e.event_id) for e in batch]
            for job in jobs:
                mine = [o.seq for o in outcomes if o.job_id == job]
                assert mine == sorted(mine)
        for job in jobs:
            raw = await log.read_job_raw(job)
            assert verify_chain(job, raw) is None
            assert len(raw) == sum(1 for batch in batches for e in batch if e.job_id == job)
        assert await log.count() == sum(map(len, batches))

    async def test_concurrent_duplicates_append_exactly_once(self, log: EventLog) -> None:
        await log.append(submitted("job-1"), T0)
        event = heartbeat("job-1")
        outcomes = await asyncio.gather(*(log.append(event, T0) for _ in range(self.writers)))
        statuses = [outcome.status for outcome in outcomes]
        assert statuses.count(AppendStatus.APPENDED) == 1
        assert statuses.count(AppendStatus.DUPLICATE) == self.writers - 1
        assert {outcome.seq for outcome in outcomes} == {2}
        assert await log.count() == 2

    async def test_dots_operator_keys_and_huge_ints_round_trip(self, log: EventLog) -> None:
        payload: dict[str, JsonValue] = {"$gt": "", "$where": "sleep(1)", "a.b": {"$set": 1}}
        payload |= {"big": 2**80, "small": -(2**80), "text": "ü€😀 \u0000 end"}
        event = submitted("a.b", payload)
        await log.append(event, T0)
        [raw] = await log.read_job_raw("a.b")
        [recorded] = await log.read_job("a.b")
        assert raw.data == canonical_json(event)
        assert json.loads(raw.data)["payload"] == payload
        assert recorded.event == event
        assert await log.read_job("a") == await log.read_job("a.*") == []

    async def test_query_fields_are_read_raw_as_stored(self, log: EventLog) -> None:
        event = heartbeat("job-1", 1)
        await log.append(event, T0)
        [raw] = await log.read_job_raw("job-1")
        [scanned] = await scan_raw(log)
        assert raw == scanned
        assert (raw.type, raw.attempt, raw.flaw) == ("heartbeat", 1, None)
        assert raw.occurred_at.utcoffset() == timedelta(0)
        stored_at = event.occurred_at.replace(
            microsecond=event.occurred_at.microsecond
            - event.occurred_at.microsecond % (raw.occurred_at_unit // timedelta(microseconds=1))
        )
        assert raw.occurred_at == stored_at
        assert raw.occurred_at_unit in {timedelta(microseconds=1), timedelta(milliseconds=1)}

    @pytest.mark.parametrize("field", list(EDITS))
    async def test_an_edit_of_any_stored_field_breaks_the_chain_at_that_entry(
        self, log: EventLog, edit: Edit, field: str
    ) -> None:
        for n in range(3):
            await log.append(heartbeat("job-1", n), T0)
        [_, second, _] = await log.read_job_raw("job-1")
        value, found = EDITS[field]
        if field == "data":
            value = second.data.replace("node-7", "node-8")
        await edit("job-1", 2, {field: value})
        broken = verify_chain("job-1", await log.read_job_raw("job-1"))
        assert broken is not None
        assert f"at seq {broken.seq}: {broken.reason}".startswith(found), broken
        # The whole-log scan (what `jobtrail verify` reads) sees it as the per-job read does.
        scanned = [e for e in await scan_raw(log) if e.job_id == "job-1"]
        assert verify_chain("job-1", scanned) == broken


class ServerBackedContract(EventLogContract):
    """Adds what only a real store has: outages, and rows someone could edit behind our back."""

    @pytest.fixture
    async def unreachable_log(self, unreachable_url: str) -> AsyncIterator[EventLog]:
        log = open_event_log(unreachable_url)
        yield log
        await log.close()
        # A driver may drop a socket whose connection was refused without closing it (seen once
        # in a full run: an unclosed 127.0.0.1 socket with no peer, reported by whichever later
        # test the garbage collector happened to run in). Collect it here, knowingly.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()

    async def test_an_outage_raises_log_unavailable(self, unreachable_log: EventLog) -> None:
        attempts: list[Callable[[], Awaitable[object]]] = [
            unreachable_log.ensure_schema,
            lambda: unreachable_log.append(submitted("job-1"), T0),
            lambda: unreachable_log.append_many([submitted("job-1")], T0),
            lambda: unreachable_log.read_job("job-1"),
            lambda: unreachable_log.read_job_raw("job-1"),
            unreachable_log.count,
            lambda: anext(unreachable_log.scan_raw()),
        ]
        for attempt in attempts:
            with pytest.raises(LogUnavailable) as caught:
                await attempt()
            assert caught.value.__cause__ is not None

    async def test_tampering_is_read_raw_and_detected(self, log: EventLog, tamper: Tamper) -> None:
        await log.append(submitted("job-1"), T0)
        await log.append(heartbeat("job-1", 1), T0)
        [_, second] = await log.read_job_raw("job-1")
        forged = second.data.replace("node-7", "node-8")
        await tamper("job-1", 2, forged)
        raw = await log.read_job_raw("job-1")
        assert raw[1].data == forged
        assert verify_chain("job-1", raw) == ChainBreak(
            "job-1", 2, "hash does not match the entry's content"
        )


class TestInMemoryEventLog(EventLogContract):
    @pytest.fixture
    def log(self) -> EventLog:
        return InMemoryEventLog(page_size=PAGE_SIZE)

    @pytest.fixture
    def edit(self, log: InMemoryEventLog) -> Edit:
        async def edit(job_id: str, seq: int, fields: dict[str, Any]) -> None:
            # White-box, as a process sharing the fake's memory could: the stored entry replaced.
            entries = log._jobs[job_id]
            [index] = [i for i, entry in enumerate(entries) if entry.seq == seq]
            changed = replace(entries[index], **fields)
            if changed.job_id != job_id:
                del entries[index]
                log._jobs.setdefault(changed.job_id, []).append(changed)
            else:
                entries[index] = changed
                entries.sort(key=lambda entry: entry.seq)  # as a store's (job_id, seq) index reads

        return edit


class SqlContract(ServerBackedContract):
    @pytest.fixture
    async def log(self, url: str) -> AsyncIterator[EventLog]:
        log = SqlEventLog(url, page_size=PAGE_SIZE)
        await log.ensure_schema()
        yield log
        await log.close()

    @pytest.fixture
    def tamper(self, url: str) -> Tamper:
        async def tamper(job_id: str, seq: int, data: str) -> None:
            engine, c = create_async_engine(async_url(url)), events_table.c
            async with engine.begin() as conn:
                where = (c.job_id == job_id) & (c.seq == seq)
                await conn.execute(update(events_table).where(where).values(data=data))
            await engine.dispose()

        return tamper

    @pytest.fixture
    def edit(self, url: str) -> Edit:
        async def edit(job_id: str, seq: int, fields: dict[str, Any]) -> None:
            engine, c = create_async_engine(async_url(url)), events_table.c
            async with engine.begin() as conn:
                where = (c.job_id == job_id) & (c.seq == seq)
                result = await conn.execute(update(events_table).where(where).values(fields))
                assert result.rowcount == 1
            await engine.dispose()

        return edit


class TestSqliteEventLog(SqlContract):
    @pytest.fixture
    def url(self, sqlite_url: str) -> str:
        return sqlite_url.replace("+aiosqlite", "")  # the adapter fills in the async driver

    @pytest.fixture
    def unreachable_url(self, tmp_path: Path) -> str:
        return f"sqlite+aiosqlite:///{tmp_path}/missing-dir/jobtrail.db"


class TestPostgresEventLog(SqlContract):
    @pytest.fixture
    def url(self, pg_url: str) -> str:
        return pg_url.replace("+asyncpg", "")  # the adapter fills in the async driver

    @pytest.fixture
    def unreachable_url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/jobtrail"


class TestMongoEventLog(ServerBackedContract):
    @pytest.fixture
    async def log(self, mongo_url: str) -> AsyncIterator[EventLog]:
        log = MongoEventLog(mongo_url, page_size=PAGE_SIZE)
        await log.ensure_schema()
        yield log
        await log.close()

    @pytest.fixture
    async def tamper(self, mongo_url: str) -> AsyncIterator[Tamper]:
        client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(mongo_url)

        async def tamper(job_id: str, seq: int, data: str) -> None:
            events = client.get_default_database().get_collection("events")
            entry, change = {"job_id": job_id, "seq": seq}, {"$set": {"data": data}}
            assert (await events.update_one(entry, change)).modified_count == 1

        yield tamper
        await client.close()

    @pytest.fixture
    async def edit(self, mongo_url: str) -> AsyncIterator[Edit]:
        client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(mongo_url)

        async def edit(job_id: str, seq: int, fields: dict[str, Any]) -> None:
            events = client.get_default_database().get_collection("events")
            entry, change = {"job_id": job_id, "seq": seq}, {"$set": fields}
            assert (await events.update_one(entry, change)).modified_count == 1

        yield edit
        await client.close()

    @pytest.mark.parametrize("rival_is_the_same_event", [False, True])
    async def test_a_batch_that_loses_a_race_midway_appends_the_rest_one_by_one(
        self, log: MongoEventLog, monkeypatch: pytest.MonkeyPatch, rival_is_the_same_event: bool
    ) -> None:
        # White-box: a rival append lands between the batch's read of the job tips and its
        # ordered insert_many, so the insert stops at job-b and the rest must go one by one.
        await log.append(submitted("job-a"), T0)
        batch = [heartbeat("job-a", 1), heartbeat("job-b", 1), heartbeat("job-a", 2)]
        rival = batch[1] if rival_is_the_same_event else heartbeat("job-b", 9)
        read_tips = log._tips

        async def tips_then_rival(job_ids: set[str]) -> dict[str, tuple[int, str]]:
            tips = await read_tips(job_ids)
            await log.append(rival, T0)
            return tips

        monkeypatch.setattr(log, "_tips", tips_then_rival)
        outcomes = await log.append_many(batch, T0)
        b_status = AppendStatus.DUPLICATE if rival_is_the_same_event else AppendStatus.APPENDED
        b_seq = 1 if rival_is_the_same_event else 2
        assert [(o.job_id, o.status, o.seq) for o in outcomes] == [
            ("job-a", AppendStatus.APPENDED, 2),
            ("job-b", b_status, b_seq),
            ("job-a", AppendStatus.APPENDED, 3),
        ]
        for job in ("job-a", "job-b"):
            assert verify_chain(job, await log.read_job_raw(job)) is None
        assert await log.count() == 5 - rival_is_the_same_event

    @pytest.mark.parametrize(
        ("options", "expected"),
        [
            ("", WriteConcern(w="majority", j=True)),
            ("&w=1&journal=false", WriteConcern(w=1, j=False)),
            ("&W=2&wtimeoutMS=50", WriteConcern(w=2, j=True, wtimeout=50)),
            ("&journal=false", WriteConcern(w="majority", j=False)),
            ("&w=0", WriteConcern(w=0)),
        ],
    )
    async def test_writes_are_majority_and_journaled_unless_the_url_says_otherwise(
        self, mongo_url: str, options: str, expected: WriteConcern
    ) -> None:
        # An event is acked to RabbitMQ once written: by default the write must be on a
        # majority of the replica set and in its journal. The URL's options win.
        log = MongoEventLog(mongo_url + options)
        anchors = MongoAnchorStore(mongo_url + options)
        try:
            assert log._events.write_concern == expected
            assert anchors._anchors.write_concern == anchors._events.write_concern == expected
            if options == "":  # the server takes such writes, and reads them back
                await log.ensure_schema()
                event = submitted("job-durable")
                outcomes = await log.append_many([event, heartbeat("job-durable")], T0)
                assert [o.status for o in outcomes] == [AppendStatus.APPENDED] * 2
                assert verify_chain("job-durable", await log.read_job_raw("job-durable")) is None
        finally:
            await log.close()
            await anchors.close()

    def test_a_write_concern_option_pymongo_does_not_know_is_a_clear_error(
        self, mongo_url: str
    ) -> None:
        with pytest.raises(ValueError, match=r"invalid MongoDB URL: Unknown option: j\b"):
            MongoEventLog(mongo_url + "&j=true")

    @pytest.fixture
    def unreachable_url(self) -> str:
        port = free_port()
        return f"mongodb://127.0.0.1:{port}/jobtrail?directConnection=true&serverSelectionTimeoutMS=300"

"""The JobQueries contract (lists, pages, counts, throughput), for the fake, SQLite and PostgreSQL.

One data set is seeded per backend (class-scoped) and every read test runs against it. Some of
its tenants are hostile strings: filtering on them must return exactly their own row, proving the
value is compared as data, never read as SQL or as a MongoDB operator.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import text

from app.adapters.memory_queries import InMemoryJobQueries
from app.adapters.memory_store import InMemoryProjectionStore
from app.adapters.sql_queries import SqlJobQueries, list_jobs_query
from app.adapters.sql_schema import make_engine, migrate
from app.adapters.sql_store import SqlProjectionStore
from app.ports import (
    AttemptRow,
    EndedCount,
    GroupCount,
    InvalidQuery,
    JobFilter,
    JobQueries,
    JobRow,
    LatencyRow,
    PageKey,
    ProjectionStore,
    ProjectionUnavailable,
    ProjectionUpdate,
)
from app.services.queries import (
    MAX_PAGE_SIZE,
    InvalidCursor,
    decode_cursor,
    encode_cursor,
    job_stats,
    list_jobs,
)
from tests import servers

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
PLUS_TWO = timezone(timedelta(hours=2))
HOSTILE = [
    "' OR 1=1 --",
    "x'; DROP TABLE jobs; --",
    '{"$gt": ""}',
    "$where",
    "a.b",
    "%",
    "_",
    "\\",
    "ünï ✓",
]
# (job_id, status, queue, pool, tenant, model, priority, job_type, error, node, seconds after T0)
SPEC: list[tuple[Any, ...]] = [
    ("j01", "queued", "q-a", "pool-a", "acme", "llama", "urgent", "sync", None, None, 1),
    ("j02", "reserved", "q-a", "pool-a", "acme", "llama", "urgent", "sync", None, "node-1", 2),
    ("j03", "completed", "q-b", "pool-b", "globex", "mistral", "bulk", "batch", None, "node-2", 2),
    (
        "j04",
        "cooling_down",
        "q-b",
        "pool-b",
        "acme",
        "mistral",
        "bulk",
        "polling",
        "oom",
        "node-1",
        2,
    ),
    (
        "j05",
        "dead_lettered",
        "q-c",
        "pool-c",
        "initech",
        "llama",
        "test",
        "stream",
        "timeout",
        "node-3",
        3,
    ),
    ("j06", "expired", "q-a", "pool-a", "globex", "llama", "urgent", "sync", None, None, 4),
    ("j07", "cancelled", "q-c", "pool-c", "acme", "phi", "test", "batch", "oom", "node-2", 5),
    ("j08", None, None, None, None, None, None, None, None, None, 6),
] + [
    (f"h{i:02d}", "queued", "q-h", "pool-h", value, "llama", "bulk", "sync", value, value, 7 + i)
    for i, value in enumerate(HOSTILE)
]


def make_row(spec: tuple[Any, ...]) -> JobRow:
    job_id, status, queue, pool, tenant, model, priority, job_type, error, node, seconds = spec
    updated = T0 + timedelta(seconds=seconds)
    return JobRow(
        job_id=job_id,
        status=status,
        attempt=1,
        max_attempts=3,
        job_type=job_type,
        model=model,
        priority=priority,
        tenant=tenant,
        pool=pool,
        queue=queue,
        node_id=node,
        last_error_code=error,
        last_error_message=None,
        terminal_reason=None,
        next_deadline_at=None,
        deadline_kind=None,
        anomalies=0,
        last_seq=3,
        submitted_at=T0,
        # One row is given in +02:00: the stores hand every instant back in UTC.
        updated_at=updated.astimezone(PLUS_TWO) if job_id == "j07" else updated,
    )


ROWS = [make_row(spec) for spec in SPEC]
UNLISTED = replace(ROWS[0], job_id="z-no-updated-at", updated_at=None)
ATTEMPTS = [
    AttemptRow(
        "j01", 1, "pool-a", "q-a", "n", T0, T0 - timedelta(microseconds=1), "completed", None
    ),
    AttemptRow("j03", 1, "pool-b", "q-b", "n", T0, T0 + timedelta(seconds=10), "completed", None),
    AttemptRow("j04", 1, "pool-b", "q-b", "n", T0, T0 + timedelta(seconds=70), "failed", "oom"),
    AttemptRow(
        "j05",
        1,
        "pool-c",
        "q-c",
        "n",
        T0,
        T0 + timedelta(seconds=59.999),
        "dead_lettered:poison",
        None,
    ),
    AttemptRow(
        "j05", 2, "pool-c", "q-c", "n", T0, T0 + timedelta(seconds=61), "expired:lease", None
    ),
    AttemptRow(
        "j06", 1, "pool-a", "q-a", "n", T0, T0 + timedelta(seconds=120), "expired:ttl", None
    ),
    AttemptRow("j07", 1, "pool-c", "q-c", "n", T0, None, None, None),
]
FIELD_OF = {"error_code": "last_error_code"}


def utc(row: JobRow) -> JobRow:
    assert row.updated_at is not None
    return replace(row, updated_at=row.updated_at.astimezone(UTC))


def expected(**filters: Any) -> list[str]:
    """The job ids a filter must return, computed here independently of any adapter."""
    chosen = []
    for row in ROWS:
        assert row.updated_at is not None
        since, until = filters.get("updated_since"), filters.get("updated_until")
        if since is not None and row.updated_at < since:
            continue
        if until is not None and row.updated_at >= until:
            continue
        plain = {k: v for k, v in filters.items() if not k.startswith("updated_")}
        if all(getattr(row, FIELD_OF.get(k, k)) == v for k, v in plain.items()):
            chosen.append(row)
    chosen.sort(key=lambda r: (r.updated_at, r.job_id), reverse=True)
    return [r.job_id for r in chosen]


async def seed(store: ProjectionStore) -> None:
    updates = [
        ProjectionUpdate(job=row, attempts=[a for a in ATTEMPTS if a.job_id == row.job_id])
        for row in [*ROWS, UNLISTED]
    ]
    await store.apply(updates)


async def all_pages(queries: JobQueries, filters: JobFilter, limit: int) -> list[list[str]]:
    pages, cursor = [], None
    while True:
        page = await list_jobs(queries, filters, limit=limit, cursor=cursor)
        pages.append([row.job_id for row in page.items])
        if page.next_cursor is None:
            return pages
        cursor = page.next_cursor


EQUALITY_CASES = [
    ("status", "queued"),
    ("status", "dead_lettered"),
    ("status", "completed"),
    ("queue", "q-a"),
    ("pool", "pool-b"),
    ("tenant", "acme"),
    ("model", "llama"),
    ("priority", "bulk"),
    ("job_type", "batch"),
    ("error_code", "oom"),
    ("node_id", "node-1"),
    *[(name, value) for value in HOSTILE for name in ("tenant", "error_code", "node_id")],
    ("tenant", "ACME"),
    ("tenant", "acme "),
    ("tenant", "acme' --"),
    ("pool", "' OR '1'='1"),
    ("model", '{"$ne": null}'),
    ("queue", "x" * 200),
]


class JobQueriesContract:
    """Every JobQueries adapter passes these; subclasses provide a seeded ``queries`` fixture."""

    async def test_lists_every_row_newest_first_job_id_breaking_ties(
        self, queries: JobQueries
    ) -> None:
        rows = await queries.list_jobs(JobFilter(), limit=1000, after=None)
        assert [r.job_id for r in rows] == expected()
        assert rows == [
            utc(r) for r in sorted(ROWS, key=lambda r: (r.updated_at, r.job_id), reverse=True)
        ]
        assert all(
            r.updated_at is not None and r.updated_at.utcoffset() == timedelta(0) for r in rows
        )

    @pytest.mark.parametrize(("name", "value"), EQUALITY_CASES)
    async def test_each_filter_returns_exactly_its_rows(
        self, queries: JobQueries, name: str, value: str
    ) -> None:
        rows = await queries.list_jobs(JobFilter(**{name: value}), limit=1000, after=None)
        assert [r.job_id for r in rows] == expected(**{name: value})

    async def test_hostile_values_each_match_only_their_own_row(self, queries: JobQueries) -> None:
        for i, value in enumerate(HOSTILE):
            rows = await queries.list_jobs(JobFilter(tenant=value), limit=1000, after=None)
            assert [r.job_id for r in rows] == [f"h{i:02d}"], value

    async def test_filters_combine_with_and(self, queries: JobQueries) -> None:
        filters = {"tenant": "acme", "model": "mistral", "error_code": "oom"}
        rows = await queries.list_jobs(JobFilter(**filters), limit=1000, after=None)
        assert [r.job_id for r in rows] == expected(**filters) == ["j04"]
        none = JobFilter(status="queued", pool="pool-b")
        assert await queries.list_jobs(none, limit=1000, after=None) == []

    async def test_updated_range_is_since_inclusive_until_exclusive(
        self, queries: JobQueries
    ) -> None:
        since, until = T0 + timedelta(seconds=2), T0 + timedelta(seconds=5)
        # The same instants given in another offset select the same rows.
        filters = JobFilter(updated_since=since.astimezone(PLUS_TWO), updated_until=until)
        rows = await queries.list_jobs(filters, limit=1000, after=None)
        assert [r.job_id for r in rows] == expected(updated_since=since, updated_until=until)
        assert [r.job_id for r in rows] == ["j06", "j05", "j04", "j03", "j02"]

    @pytest.mark.parametrize("limit", [1, 2, 3, 7, MAX_PAGE_SIZE])
    async def test_pages_cover_every_row_once_in_order(
        self, queries: JobQueries, limit: int
    ) -> None:
        pages = await all_pages(queries, JobFilter(), limit)
        assert [job for page in pages for job in page] == expected()
        assert all(len(page) == limit for page in pages[:-1])
        assert 1 <= len(pages[-1]) <= limit

    async def test_pages_of_a_filtered_list_split_ties(self, queries: JobQueries) -> None:
        pages = await all_pages(queries, JobFilter(updated_until=T0 + timedelta(seconds=3)), 1)
        assert pages == [["j04"], ["j03"], ["j02"], ["j01"]]

    async def test_a_page_after_the_last_row_is_empty(self, queries: JobQueries) -> None:
        after = PageKey(T0, "j00")
        assert await queries.list_jobs(JobFilter(), limit=10, after=after) == []
        beyond = PageKey(T0 + timedelta(seconds=2), "j03")
        rows = await queries.list_jobs(JobFilter(), limit=10, after=beyond)
        assert [r.job_id for r in rows] == ["j02", "j01"]

    async def test_count_jobs_groups_by_queue_and_status(self, queries: JobQueries) -> None:
        counts = sorted(await queries.count_jobs(), key=lambda g: (g.queue or "", g.status or ""))
        assert GroupCount("q-h", "queued", len(HOSTILE)) in counts
        assert GroupCount(None, None, 1) in counts
        assert GroupCount("q-a", "queued", 2) in counts  # j01 and the unlisted row
        assert sum(g.count for g in counts) == len(ROWS) + 1

    async def test_attempts_ended_per_minute_and_outcome(self, queries: JobQueries) -> None:
        ended = await queries.attempts_ended(T0, T0 + timedelta(minutes=2))
        assert sorted(ended, key=lambda e: (e.minute, e.outcome)) == [
            EndedCount(T0, "completed", 1),
            EndedCount(T0, "dead_lettered:poison", 1),
            EndedCount(T0 + timedelta(minutes=1), "expired:lease", 1),
            EndedCount(T0 + timedelta(minutes=1), "failed", 1),
        ]
        assert all(e.minute.utcoffset() == timedelta(0) for e in ended)

    @pytest.mark.parametrize(
        ("start", "end"),
        [(0, 1), (60, 121), (11, 60), (-60, 0)],
        ids=["t0", "late", "gap", "before"],
    )
    async def test_latency_rows_are_the_attempts_reserved_or_ended_in_the_window(
        self, queries: JobQueries, start: int, end: int
    ) -> None:
        since, until = T0 + timedelta(seconds=start), T0 + timedelta(seconds=end)
        jobs = {row.job_id: utc(row) for row in ROWS}

        def inside(at: datetime | None) -> bool:
            return at is not None and since <= at < until

        wanted = [
            LatencyRow.of(jobs[a.job_id], a)
            for a in ATTEMPTS
            if inside(a.reserved_at) or inside(a.ended_at)
        ]
        found = await queries.latency_rows(since, until)
        assert sorted(found, key=lambda r: (r.job_id, r.attempt)) == wanted

    async def test_stats_fill_every_minute_of_the_window(self, queries: JobQueries) -> None:
        stats = await job_stats(queries, T0 + timedelta(minutes=1, seconds=30), 3)
        assert (stats.since, stats.until) == (T0 - timedelta(minutes=1), T0 + timedelta(minutes=2))
        assert [m.minute for m in stats.per_minute] == [
            T0 - timedelta(minutes=1),
            T0,
            T0 + timedelta(minutes=1),
        ]
        assert stats.per_minute[0].counts == dict.fromkeys(stats.ended, 0) | {"completed": 1}
        assert stats.ended == {"completed": 2, "failed": 1, "expired": 1, "dead_lettered": 1}
        assert stats.failure_rate == pytest.approx(3 / 5)
        assert stats.completed_per_minute == pytest.approx(2 / 3)
        assert stats.by_status["queued"] == len(HOSTILE) + 2
        assert stats.by_status["unknown"] == 1
        assert stats.by_queue[None] == {"unknown": 1}
        assert stats.total == len(ROWS) + 1

    async def test_ping_answers(self, queries: JobQueries) -> None:
        await queries.ping()


# Seeded once per backend (module scope); the test classes below only read.


@pytest.fixture(scope="module")
async def memory_queries() -> JobQueries:
    store = InMemoryProjectionStore()
    await seed(store)
    return InMemoryJobQueries(store)


@pytest.fixture(scope="module")
def sqlite_module_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('queries') / 'jobtrail.db'}"


@pytest.fixture(scope="module")
def pg_module_url() -> Iterator[str]:
    with servers.pg_database() as url:
        yield url


async def seeded_sql(url: str) -> AsyncIterator[SqlJobQueries]:
    await migrate(url)
    store = SqlProjectionStore(url)
    try:
        await seed(store)
    finally:
        await store.close()
    queries = SqlJobQueries(url)
    yield queries
    await queries.close()


@pytest.fixture(scope="module")
async def sqlite_queries(sqlite_module_url: str) -> AsyncIterator[JobQueries]:
    async for queries in seeded_sql(sqlite_module_url):
        yield queries


@pytest.fixture(scope="module")
async def pg_queries(pg_module_url: str) -> AsyncIterator[JobQueries]:
    async for queries in seeded_sql(pg_module_url):
        yield queries


class TestInMemoryJobQueries(JobQueriesContract):
    @pytest.fixture
    def queries(self, memory_queries: JobQueries) -> JobQueries:
        return memory_queries


class SqlJobQueriesContract(JobQueriesContract):
    """SQL-only behaviour: errors and the query plans."""

    async def test_unreachable_raises_projection_unavailable(self, unreachable_url: str) -> None:
        queries = SqlJobQueries(unreachable_url)
        try:
            with pytest.raises(ProjectionUnavailable):
                await queries.ping()
            with pytest.raises(ProjectionUnavailable):
                await queries.list_jobs(JobFilter(), limit=1, after=None)
        finally:
            await queries.close()

    async def test_a_borrowed_engine_is_left_open(self, url: str) -> None:
        engine = make_engine(url)
        try:
            queries = SqlJobQueries(engine)
            await queries.close()
            async with engine.connect() as conn:
                assert await conn.scalar(text("SELECT 1")) == 1
        finally:
            await engine.dispose()


class TestSqliteJobQueries(SqlJobQueriesContract):
    @pytest.fixture
    def url(self, sqlite_module_url: str) -> str:
        return sqlite_module_url

    @pytest.fixture
    def queries(self, sqlite_queries: JobQueries) -> JobQueries:
        return sqlite_queries

    @pytest.fixture
    def unreachable_url(self, tmp_path: Path) -> str:
        return f"sqlite+aiosqlite:///{tmp_path}/missing/dir/x.db"

    @pytest.mark.parametrize(
        "filters",
        [
            {},
            *[{name: value} for name, value in EQUALITY_CASES[:11]],
            {"updated_since": T0},
            {"status": "queued", "tenant": "acme"},
        ],
    )
    async def test_a_filtered_page_never_scans_the_table(
        self, queries: JobQueries, url: str, filters: dict[str, Any]
    ) -> None:
        key = PageKey(T0 + timedelta(seconds=5), "j07")
        query = list_jobs_query(JobFilter(**filters), limit=101, after=key)
        engine = make_engine(url)
        try:
            compiled = query.compile(engine.sync_engine, compile_kwargs={"literal_binds": True})
            async with engine.connect() as conn:
                plan = [
                    row[-1] for row in await conn.execute(text(f"EXPLAIN QUERY PLAN {compiled}"))
                ]
        finally:
            await engine.dispose()
        assert not [step for step in plan if step.strip() == "SCAN jobs"], plan
        assert any("INDEX" in step for step in plan), plan


@pytest.mark.integration
class TestPostgresJobQueries(SqlJobQueriesContract):
    @pytest.fixture
    def url(self, pg_module_url: str) -> str:
        return pg_module_url

    @pytest.fixture
    def queries(self, pg_queries: JobQueries) -> JobQueries:
        return pg_queries

    @pytest.fixture
    def unreachable_url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{servers.free_port()}/jobtrail"

    async def test_an_unmigrated_database_is_unavailable(self, pg_url: str) -> None:
        queries = SqlJobQueries(pg_url)
        try:
            with pytest.raises(ProjectionUnavailable):
                await queries.ping()
        finally:
            await queries.close()

    @pytest.mark.parametrize(
        "filters", [{}, {"status": "queued"}, {"pool": "pool-a"}, {"updated_since": T0}]
    )
    async def test_a_filtered_page_can_use_an_index(
        self, queries: JobQueries, url: str, filters: dict[str, Any]
    ) -> None:
        query = list_jobs_query(JobFilter(**filters), limit=101, after=PageKey(T0, "j07"))
        engine = make_engine(url)
        try:
            async with engine.connect() as conn:
                await conn.execute(text("SET enable_seqscan = off"))
                compiled = query.compile(
                    conn.sync_connection, compile_kwargs={"literal_binds": True}
                )
                plan = [row[0] for row in await conn.execute(text(f"EXPLAIN {compiled}"))]
        finally:
            await engine.dispose()
        assert not [step for step in plan if "Seq Scan on jobs" in step], plan


# The use cases: validation, cursors and pages, on the fake.


@pytest.fixture
async def fake() -> JobQueries:
    store = InMemoryProjectionStore()
    await seed(store)
    return InMemoryJobQueries(store)


def test_a_cursor_round_trips_and_is_opaque_url_safe_text() -> None:
    key = PageKey(T0 + timedelta(microseconds=7), "job:1.a-b_c")
    cursor = encode_cursor(key)
    assert decode_cursor(cursor) == key
    assert set(cursor) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "!!!",
        "bm90IGpzb24",  # "not json"
        encode_cursor(PageKey(T0, "j01"))[:-3],
        "WzEsMl0",  # [1,2]
        "WyIyMDI2LTAzLTAxVDEyOjAwOjAwIiwgImowMSJd",  # a naive instant
        "WyIyMDI2LTAzLTAxVDEyOjAwOjAwKzAwOjAwIiwgInskZ3QiOiAiIn0iXQ",  # a job id '{"$gt": ""}'
        "x" * 10_000,
    ],
)
async def test_a_bad_cursor_is_refused(fake: JobQueries, cursor: str) -> None:
    with pytest.raises(InvalidCursor):
        await list_jobs(fake, JobFilter(), cursor=cursor)


@pytest.mark.parametrize("limit", [0, -1, MAX_PAGE_SIZE + 1])
async def test_a_bad_limit_is_refused(fake: JobQueries, limit: int) -> None:
    with pytest.raises(InvalidQuery):
        await list_jobs(fake, JobFilter(), limit=limit)


@pytest.mark.parametrize(
    "fields",
    [
        {"status": "lost"},
        {"priority": "high"},
        {"job_type": "cron"},
        {"tenant": ""},
        {"tenant": "x" * 201},
        {"tenant": "a\x00b"},
        {"pool": {"$gt": ""}},
        {"updated_since": "2026-03-01T12:00:00"},  # naive
        {"updated_since": "9999-12-31T23:00:00-05:00"},  # beyond year 9999 in UTC
        {"updated_since": T0, "updated_until": T0},
        {"owner": "me"},
    ],
)
def test_a_bad_filter_is_refused(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        JobFilter(**fields)

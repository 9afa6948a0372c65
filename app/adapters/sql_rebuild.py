"""Blue/green projection tables on SQL: fill ``*__rebuild`` beside the live tables, then swap.

The fresh tables (``jobs__rebuild``, ``attempts__rebuild``, ``timers__rebuild``) have the live
tables' columns and keys; they are filled without secondary indexes (faster bulk inserts). The
swap is one transaction of renames (PostgreSQL and SQLite both run DDL transactionally): the live
tables become ``*__previous`` (kept until the next rebuild), the fresh ones take the live names and
the live index and constraint names. The outbox and the checkpoints are never touched.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import (
    Column,
    Index,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    insert,
    inspect,
    select,
    text,
)
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.schema import CreateIndex, CreateTable

from app.adapters.sql_models import attempts, jobs, timers
from app.adapters.sql_schema import EngineHolder
from app.ports import (
    AttemptRow,
    JobBundle,
    JobRow,
    ProjectionUnavailable,
    ProjectionUpdate,
    Side,
    TimerRow,
)

FRESH = "__rebuild"
PREVIOUS = "__previous"
REBUILT_TABLES = (jobs, attempts, timers)
DEFAULT_PAGE_SIZE = 2000

_JOB_FIELDS = [f.name for f in fields(JobRow)]
_ATTEMPT_FIELDS = [f.name for f in fields(AttemptRow)]
_TIMER_FIELDS = [f.name for f in fields(TimerRow)]


@contextmanager
def _driver_errors(action: str) -> Iterator[None]:
    try:
        yield
    except (SQLAlchemyError, OSError) as exc:
        raise ProjectionUnavailable(f"rebuild: {action} failed: {exc}") from exc


def _twin(live: Table, metadata: MetaData, pk_name: str) -> Table:
    """A table with ``live``'s columns and primary key, named ``<live>__rebuild``."""
    columns = [
        Column(c.name, c.type, nullable=c.nullable, autoincrement=False) for c in live.columns
    ]
    key = PrimaryKeyConstraint(*(c.name for c in live.primary_key.columns), name=pk_name)
    return Table(live.name + FRESH, metadata, *columns, key)


def _pk_name(table: Table) -> str:
    name = table.primary_key.name
    assert isinstance(name, str)
    return name


@dataclass(frozen=True)
class _Pair:
    """A live table, its fresh twin, and the twin's indexes (named ``<live index>__rebuild``)."""

    live: Table
    fresh: Table

    @property
    def indexes(self) -> list[Index]:
        return sorted(self.live.indexes, key=lambda ix: str(ix.name))

    def fresh_index(self, like: Index) -> Index:
        for index in self.fresh.indexes:
            if index.name == f"{like.name}{FRESH}":
                return index
        raise LookupError(f"no fresh twin of index {like.name}")


def _pair(live: Table, metadata: MetaData, pg: bool) -> _Pair:
    # PostgreSQL names constraints and indexes schema-wide, so the fresh ones take a suffix and
    # their live names at the swap; SQLite keys are per table and its indexes are recreated.
    fresh = _twin(live, metadata, _pk_name(live) + (FRESH if pg else ""))
    for index in live.indexes:
        Index(f"{index.name}{FRESH}", *(fresh.c[c.name] for c in index.columns))
    return _Pair(live, fresh)


class SqlRebuildTables(EngineHolder):
    """RebuildTarget on the projection database (PostgreSQL or SQLite)."""

    def __init__(
        self, engine_or_url: AsyncEngine | str, *, page_size: int = DEFAULT_PAGE_SIZE
    ) -> None:
        super().__init__(engine_or_url)
        self._page_size = page_size
        self._pg = self._engine.dialect.name == "postgresql"
        metadata = MetaData()
        self._pairs = [_pair(live, metadata, self._pg) for live in REBUILT_TABLES]

    async def prepare(self) -> None:
        """Drop leftovers of an interrupted rebuild and create empty fresh tables."""
        with _driver_errors("creating the fresh tables"):
            async with self._writer.begin() as conn:
                for pair in self._pairs:
                    await conn.execute(text(f"DROP TABLE IF EXISTS {pair.fresh.name}"))
                    await conn.execute(CreateTable(pair.fresh))

    async def write(self, updates: Sequence[ProjectionUpdate]) -> None:
        """Insert the jobs' rows into the fresh tables in one transaction."""
        job_rows = [_values(u.job, _JOB_FIELDS) for u in updates]
        attempt_rows = [_values(a, _ATTEMPT_FIELDS) for u in updates for a in u.attempts]
        timer_rows = [_values(u.timer, _TIMER_FIELDS) for u in updates if u.timer is not None]
        jobs_fresh, attempts_fresh, timers_fresh = (p.fresh for p in self._pairs)
        with _driver_errors("writing rebuilt rows"):
            async with self._writer.begin() as conn:
                for table, rows in (
                    (jobs_fresh, job_rows),
                    (attempts_fresh, attempt_rows),
                    (timers_fresh, timer_rows),
                ):
                    if rows:
                        await conn.execute(insert(table), rows)

    async def bundles(self, side: Side) -> AsyncIterator[JobBundle]:
        """Every job of one side ordered by job_id, one keyset page at a time."""
        tables = [p.live if side is Side.LIVE else p.fresh for p in self._pairs]
        after: str | None = None
        while True:
            page, last = await self._page(tables, after)
            for bundle in page:
                yield bundle
            if last is None:
                return
            after = last

    async def _page(
        self, tables: list[Table], after: str | None
    ) -> tuple[list[JobBundle], str | None]:
        """One page of bundles, and the last job_id if more pages may follow."""
        job_table, attempt_table, timer_table = tables
        query = select(*_columns(job_table, _JOB_FIELDS))
        query = query.order_by(job_table.c.job_id).limit(self._page_size)
        if after is not None:
            query = query.where(job_table.c.job_id > after)
        with _driver_errors("reading projection rows"):
            async with self._engine.connect() as conn:
                rows = [JobRow(**r._mapping) for r in await conn.execute(query)]
                last = rows[-1].job_id if len(rows) == self._page_size else None
                found_attempts = await _in_range(
                    conn, attempt_table, _ATTEMPT_FIELDS, after, last, "attempt"
                )
                found_timers = await _in_range(conn, timer_table, _TIMER_FIELDS, after, last, None)
        return _bundle(rows, found_attempts, found_timers), last

    async def same_rows(self) -> bool:
        """``EXCEPT`` both ways on every table, over the row dataclasses' columns only."""
        compared = zip(self._pairs, (_JOB_FIELDS, _ATTEMPT_FIELDS, _TIMER_FIELDS), strict=True)
        with _driver_errors("comparing the fresh tables with the live ones"):
            async with self._engine.connect() as conn:
                for pair, names in compared:
                    columns = ", ".join(names)  # the dataclasses' field names: fixed identifiers
                    for one, other in ((pair.live, pair.fresh), (pair.fresh, pair.live)):
                        query = text(
                            f"SELECT EXISTS (SELECT {columns} FROM {one.name} "  # noqa: S608
                            f"EXCEPT SELECT {columns} FROM {other.name})"
                        )
                        if await conn.scalar(query):
                            return False
        return True

    async def swap(self) -> None:
        """Make the fresh tables live in one transaction; the old ones become ``*__previous``."""
        with _driver_errors("swapping the tables"):
            async with self._writer.begin() as conn:
                for pair in self._pairs:
                    await conn.execute(text(f"DROP TABLE IF EXISTS {pair.live.name}{PREVIOUS}"))
                for pair in self._pairs:
                    if self._pg:
                        await self._swap_pg(conn, pair)
                    else:
                        await self._swap_sqlite(conn, pair)
            # Fresh tables have no planner statistics until autovacuum comes by: without them a
            # filtered page is planned for 50 rows and sorts thousands.
            async with self._writer.begin() as conn:
                for pair in self._pairs:
                    await conn.execute(text(f"ANALYZE {pair.live.name}"))

    async def _swap_pg(self, conn: AsyncConnection, pair: _Pair) -> None:
        live, fresh, indexes = pair.live.name, pair.fresh.name, pair.indexes
        for index in indexes:
            await conn.execute(CreateIndex(pair.fresh_index(index)))
        pk = _pk_name(pair.live)
        await conn.execute(text(f"ALTER TABLE {live} RENAME TO {live}{PREVIOUS}"))
        await conn.execute(
            text(f"ALTER TABLE {live}{PREVIOUS} RENAME CONSTRAINT {pk} TO {pk}{PREVIOUS}")
        )
        for index in indexes:
            await conn.execute(text(f"ALTER INDEX {index.name} RENAME TO {index.name}{PREVIOUS}"))
        await conn.execute(text(f"ALTER TABLE {fresh} RENAME TO {live}"))
        await conn.execute(text(f"ALTER TABLE {live} RENAME CONSTRAINT {pk}{FRESH} TO {pk}"))
        for index in indexes:
            await conn.execute(text(f"ALTER INDEX {index.name}{FRESH} RENAME TO {index.name}"))

    async def _swap_sqlite(self, conn: AsyncConnection, pair: _Pair) -> None:
        # SQLite cannot rename an index: the previous table loses its secondary indexes and the
        # new live table gets them under their usual names.
        live, fresh, indexes = pair.live.name, pair.fresh.name, pair.indexes
        for index in indexes:
            await conn.execute(text(f"DROP INDEX IF EXISTS {index.name}"))
        await conn.execute(text(f"ALTER TABLE {live} RENAME TO {live}{PREVIOUS}"))
        await conn.execute(text(f"ALTER TABLE {fresh} RENAME TO {live}"))
        for index in indexes:
            await conn.execute(CreateIndex(index))

    async def discard(self) -> None:
        """Drop the fresh tables."""
        with _driver_errors("dropping the fresh tables"):
            async with self._writer.begin() as conn:
                for pair in self._pairs:
                    await conn.execute(text(f"DROP TABLE IF EXISTS {pair.fresh.name}"))

    async def table_names(self) -> set[str]:
        """The names of every table in the projection database (for checks and tests)."""

        def names(sync_conn: Any) -> set[str]:
            return set(inspect(sync_conn).get_table_names())

        with _driver_errors("listing tables"):
            async with self._engine.connect() as conn:
                return await conn.run_sync(names)


def _values(row: object, names: Sequence[str]) -> dict[str, Any]:
    return {name: getattr(row, name) for name in names}


def _columns(table: Table, names: Sequence[str]) -> list[Column[Any]]:
    """The row dataclass's columns only: the tables may hold more (a timer's claim, say)."""
    return [table.c[name] for name in names]


async def _in_range(
    conn: AsyncConnection,
    table: Table,
    names: Sequence[str],
    after: str | None,
    last: str | None,
    order: str | None,
) -> list[Any]:
    query = select(*_columns(table, names))
    if after is not None:
        query = query.where(table.c.job_id > after)
    if last is not None:
        query = query.where(table.c.job_id <= last)
    query = query.order_by(table.c.job_id, *([table.c[order]] if order else []))
    return list(await conn.execute(query))


def _bundle(
    rows: list[JobRow], found_attempts: list[Any], found_timers: list[Any]
) -> list[JobBundle]:
    by_job: dict[str, list[AttemptRow]] = defaultdict(list)
    for row in found_attempts:
        by_job[row.job_id].append(AttemptRow(**row._mapping))
    timer_of = {row.job_id: TimerRow(**row._mapping) for row in found_timers}
    job_of = {row.job_id: row for row in rows}
    ids = sorted(job_of.keys() | by_job.keys() | timer_of.keys())
    return [
        JobBundle(job_id, job_of.get(job_id), tuple(by_job.get(job_id, ())), timer_of.get(job_id))
        for job_id in ids
    ]

"""The EventLog on SQL through SQLAlchemy 2 async: SQLite (aiosqlite) or PostgreSQL (asyncpg).

``log_metadata`` / ``events_table`` define the insert-only table ``jobtrail_events``; importing
them has no side effects, so Alembic migrations can build on them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    Row,
    Select,
    String,
    Table,
    Text,
    and_,
    event,
    func,
    or_,
    select,
    tuple_,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql.selectable import TextualSelect

from app.adapters.log_entries import (
    DEFAULT_PAGE_SIZE,
    MAX_APPEND_TRIES,
    DecodedEntries,
    appended,
    chain_entry,
    conflict_pause,
    decode_entry,
    duplicate,
    entry_fields,
    plan_appends,
    truncate_ms,
)
from app.adapters.sql_entries import per_job, per_job_from, sqlite_checked, stored_entry
from app.adapters.sql_errors import is_unique_violation, refusal_reason, refuses_data
from app.domain.chain import RecordedEvent, StoredEvent
from app.domain.events import JobEvent
from app.ports import AppendOutcome, LogUnavailable, WriteRefused

SQLITE_BUSY_TIMEOUT_SECONDS = 30
PG_CONNECT_TIMEOUT_SECONDS = 10
READ_JOBS_CHUNK = 1000
READ_FROM_CHUNK = 250
"""Jobs per read of ``read_jobs_from``: SQLite nests its OR terms, at most 1000 deep."""

# Byte order ("C") on PostgreSQL, so (job_id, seq) scans sort as on SQLite, MongoDB and in Python.
_JobId = String(200).with_variant(String(200, collation="C"), "postgresql")

log_metadata = MetaData()

events_table = Table(
    "jobtrail_events",
    log_metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("event_id", String(64), nullable=False),
    Column("job_id", _JobId, nullable=False),
    Column("seq", Integer, nullable=False),
    Column("type", String(32), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Column("data", Text, nullable=False),
    Index("ux_jobtrail_events_event_id", "event_id", unique=True),
    Index("ux_jobtrail_events_job_seq", "job_id", "seq", unique=True),
    Index("ix_jobtrail_events_recorded_at", "recorded_at"),
    Index("ix_jobtrail_events_type_recorded_at", "type", "recorded_at"),
)

_c = events_table.c
_AnyRow = Row[*tuple[Any, ...]]
_AnySelect = Select[*tuple[Any, ...]]
_RAW = (
    _c.job_id,
    _c.seq,
    _c.event_id,
    _c.type,
    _c.attempt,
    _c.occurred_at,
    _c.recorded_at,
    _c.prev_hash,
    _c.hash,
    _c.data,
)
"""Every column of an entry but the surrogate key ``id``, which nothing reads or orders by."""
_ASYNC_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
}


def async_url(url: str) -> URL:
    """``url`` with the async driver filled in when it names none (``sqlite://``, ``postgresql://``)."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ValueError(f"invalid SQLAlchemy URL: {exc}") from exc
    driver = _ASYNC_DRIVERS.get(parsed.drivername)
    return parsed if driver is None else parsed.set(drivername=driver)


def _engine(url: URL) -> AsyncEngine:
    if url.get_backend_name() != "sqlite":
        return create_async_engine(url, connect_args={"timeout": PG_CONNECT_TIMEOUT_SECONDS})
    engine = create_async_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS})
    event.listen(engine.sync_engine, "connect", _tune_sqlite)
    return engine


def _tune_sqlite(dbapi_connection: Any, _record: Any) -> None:
    """WAL lets readers run beside the writer; the busy timeout makes writers wait, not fail."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_SECONDS * 1000}")
    cursor.close()


def _is_locked(exc: OperationalError) -> bool:
    return "database is locked" in str(exc.orig)


def _unavailable(action: str, exc: BaseException) -> LogUnavailable:
    cause = str(getattr(exc, "orig", None) or exc).splitlines()[0] if str(exc) else ""
    return LogUnavailable(f"SQL event log: {action} failed: {type(exc).__name__}: {cause}")


def _refused(what: str, exc: BaseException) -> WriteRefused:
    return WriteRefused(f"the SQL event log refused {what}: {refusal_reason(exc)}")


class SqlEventLog:
    """EventLog on the ``jobtrail_events`` table; works on a migrated or a bare database."""

    def __init__(self, url: str, *, page_size: int = DEFAULT_PAGE_SIZE) -> None:
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        self._engine = _engine(async_url(url))
        self._page_size = page_size
        self._decoded = DecodedEntries()
        self._checked = sqlite_checked(_RAW) if self._engine.dialect.name == "sqlite" else _RAW

    async def ensure_schema(self) -> None:
        try:
            async with self._engine.begin() as conn:
                await conn.run_sync(log_metadata.create_all, checkfirst=True)
        except (SQLAlchemyError, OSError) as exc:
            raise _unavailable("creating the schema", exc) from exc

    async def append(self, event: JobEvent, recorded_at: datetime) -> AppendOutcome:
        at = truncate_ms(recorded_at)
        for attempt in range(MAX_APPEND_TRIES):
            outcome = await self._try_append(event, at)
            if outcome is not None:
                return outcome
            await conflict_pause(attempt)
        raise LogUnavailable(
            f"SQL event log: job {event.job_id!r} still conflicting after {MAX_APPEND_TRIES} tries"
        )

    async def _try_append(self, event: JobEvent, at: datetime) -> AppendOutcome | None:
        """One attempt in a fresh transaction; None when a concurrent writer took the seq first."""
        try:
            async with self._engine.begin() as conn:
                tip = (
                    await conn.execute(
                        select(_c.seq, _c.hash)
                        .where(_c.job_id == event.job_id)
                        .order_by(_c.seq.desc())
                        .limit(1)
                    )
                ).first()
                entry = chain_entry(event, at) if tip is None else chain_entry(event, at, *tip)
                await conn.execute(events_table.insert().values(entry_fields(entry)))
        except IntegrityError as exc:
            if not is_unique_violation(exc):
                raise _refused(f"job {event.job_id!r}'s event", exc) from exc
            # The failed transaction is gone; the event_id tells which unique index fired.
            return await self._stored_outcome(str(event.event_id))
        except OperationalError as exc:
            if _is_locked(exc):
                return None
            raise _unavailable("append", exc) from exc
        except (SQLAlchemyError, OSError, UnicodeError) as exc:
            if refuses_data(exc):
                raise _refused(f"job {event.job_id!r}'s event", exc) from exc
            raise _unavailable("append", exc) from exc
        return appended(entry, event)

    async def _stored_outcome(self, event_id: str) -> AppendOutcome | None:
        query = select(_c.job_id, _c.seq).where(_c.event_id == event_id)
        rows = await self._fetch(query, "append")
        return duplicate(event_id, rows[0].job_id, rows[0].seq) if rows else None

    async def append_many(
        self, events: Sequence[JobEvent], recorded_at: datetime
    ) -> list[AppendOutcome]:
        """One transaction with one multi-row insert; on a conflict, each event alone."""
        at = truncate_ms(recorded_at)
        if not events:
            return []
        batch = await self._append_batch(events, at)
        if batch is not None:
            return batch
        return [await self.append(event, at) for event in events]

    async def _append_batch(
        self, events: Sequence[JobEvent], at: datetime
    ) -> list[AppendOutcome] | None:
        """Plan seqs from the jobs' tips, insert all at once; None if a rival writer interfered."""
        try:
            async with self._engine.begin() as conn:
                known = await _known_ids(conn, [str(e.event_id) for e in events])
                tips = await _tips(conn, sorted({e.job_id for e in events}))
                outcomes, rows = plan_appends(events, at, known, tips)
                if rows:
                    await conn.execute(events_table.insert(), rows)
        except IntegrityError as exc:
            if not is_unique_violation(exc):
                raise _refused("a batch of events", exc) from exc
            return None
        except OperationalError as exc:
            if _is_locked(exc):
                return None
            raise _unavailable("append", exc) from exc
        except (SQLAlchemyError, OSError, UnicodeError) as exc:
            if refuses_data(exc):
                raise _refused("a batch of events", exc) from exc
            raise _unavailable("append", exc) from exc
        return outcomes

    async def read_job(self, job_id: str, *, until: datetime | None = None) -> list[RecordedEvent]:
        query = select(*_RAW).where(_c.job_id == job_id).order_by(_c.seq)
        if until is not None:
            query = query.where(_c.recorded_at <= until.astimezone(UTC))
        return [decode_entry(stored_entry(row)) for row in await self._fetch(query, "read")]

    async def read_jobs(self, job_ids: Sequence[str]) -> dict[str, list[RecordedEvent]]:
        found: dict[str, list[RecordedEvent]] = {job_id: [] for job_id in job_ids}
        wanted = list(found)
        # Chunks keep the bound parameters under SQLite's and asyncpg's limits.
        for start in range(0, len(wanted), READ_JOBS_CHUNK):
            chunk = wanted[start : start + READ_JOBS_CHUNK]
            if self._engine.dialect.name == "postgresql":
                rows = await self._fetch(per_job(_RAW), "read", {"ids": list(chunk)})
            else:
                query = select(*_RAW).where(_c.job_id.in_(chunk)).order_by(_c.job_id, _c.seq)
                rows = await self._fetch(query, "read")
            for row in rows:
                found[row.job_id].append(self._decoded.decode(stored_entry(row)))
        return found

    async def read_jobs_from(self, starts: Mapping[str, int]) -> dict[str, list[RecordedEvent]]:
        found: dict[str, list[RecordedEvent]] = {job_id: [] for job_id in starts}
        wanted = list(starts.items())
        for begin in range(0, len(wanted), READ_FROM_CHUNK):
            chunk = wanted[begin : begin + READ_FROM_CHUNK]
            if self._engine.dialect.name == "postgresql":
                params = {"ids": [job for job, _ in chunk], "seqs": [seq for _, seq in chunk]}
                rows = await self._fetch(per_job_from(_RAW), "read", params)
            else:
                since = or_(*(and_(_c.job_id == job, _c.seq >= seq) for job, seq in chunk))
                query = select(*_RAW).where(since).order_by(_c.job_id, _c.seq)
                rows = await self._fetch(query, "read")
            for row in rows:
                found[row.job_id].append(self._decoded.decode(stored_entry(row)))
        return found

    async def read_job_raw(self, job_id: str) -> list[StoredEvent]:
        query = select(*self._checked).where(_c.job_id == job_id).order_by(_c.seq)
        return [stored_entry(row) for row in await self._fetch(query, "read")]

    async def scan_raw(self, after_job: str | None = None) -> AsyncIterator[StoredEvent]:
        query = select(*self._checked).order_by(_c.job_id, _c.seq).limit(self._page_size)
        first = query if after_job is None else query.where(_c.job_id > after_job)
        page = await self._fetch(first, "scan")
        while page:
            for row in page:
                yield stored_entry(row)
            after = tuple_(_c.job_id, _c.seq) > tuple_(page[-1].job_id, page[-1].seq)
            page = await self._fetch(query.where(after), "scan")

    async def scan(self) -> AsyncIterator[RecordedEvent]:
        async for entry in self.scan_raw():
            yield decode_entry(entry)

    async def scan_range(
        self, since: datetime | None, until: datetime | None
    ) -> AsyncIterator[RecordedEvent]:
        window = []
        if since is not None:
            window.append(_c.recorded_at >= since.astimezone(UTC))
        if until is not None:
            window.append(_c.recorded_at < until.astimezone(UTC))
        query = (
            select(*_RAW)
            .where(*window)
            .order_by(_c.recorded_at, _c.job_id, _c.seq)
            .limit(self._page_size)
        )
        page = await self._fetch(query, "scan")
        while page:
            for row in page:
                yield decode_entry(stored_entry(row))
            last = page[-1]
            after = tuple_(_c.recorded_at, _c.job_id, _c.seq) > tuple_(
                last.recorded_at, last.job_id, last.seq
            )
            page = await self._fetch(query.where(after), "scan")

    async def count(self) -> int:
        rows = await self._fetch(select(func.count()).select_from(events_table), "count")
        return int(rows[0][0])

    async def close(self) -> None:
        try:
            await self._engine.dispose()
        except (SQLAlchemyError, OSError) as exc:
            raise _unavailable("close", exc) from exc

    async def _fetch(
        self,
        query: _AnySelect | TextualSelect,
        action: str,
        params: dict[str, Any] | None = None,
    ) -> Sequence[_AnyRow]:
        """Run one read on a connection held only for the query, not across a caller's yields."""
        try:
            async with self._engine.connect() as conn:
                return (await conn.execute(query, params)).all()
        except (SQLAlchemyError, OSError) as exc:
            raise _unavailable(action, exc) from exc


def _chunks(items: Sequence[str]) -> list[Sequence[str]]:
    return [items[i : i + READ_JOBS_CHUNK] for i in range(0, len(items), READ_JOBS_CHUNK)]


async def _known_ids(conn: AsyncConnection, ids: Sequence[str]) -> dict[str, tuple[str, int]]:
    known: dict[str, tuple[str, int]] = {}
    for chunk in _chunks(ids):
        query = select(_c.event_id, _c.job_id, _c.seq).where(_c.event_id.in_(chunk))
        known |= {row.event_id: (row.job_id, row.seq) for row in await conn.execute(query)}
    return known


async def _tips(conn: AsyncConnection, job_ids: Sequence[str]) -> dict[str, tuple[int, str]]:
    """The last (seq, hash) of each job that has entries."""
    tips: dict[str, tuple[int, str]] = {}
    if conn.dialect.name == "postgresql":
        for chunk in _chunks(job_ids):
            latest = per_job((_c.job_id, _c.seq, _c.hash), last_only=True)
            rows = await conn.execute(latest, {"ids": list(chunk)})
            tips |= {row.job_id: (row.seq, row.hash) for row in rows}
        return tips
    for chunk in _chunks(job_ids):
        last = (
            select(_c.job_id, func.max(_c.seq).label("seq"))
            .where(_c.job_id.in_(chunk))
            .group_by(_c.job_id)
            .subquery()
        )
        query = select(_c.job_id, _c.seq, _c.hash).join(
            last, and_(_c.job_id == last.c.job_id, _c.seq == last.c.seq)
        )
        tips |= {row.job_id: (row.seq, row.hash) for row in await conn.execute(query)}
    return tips

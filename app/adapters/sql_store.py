"""The SQL ProjectionStore (SQLAlchemy 2 async; PostgreSQL via asyncpg or SQLite via aiosqlite).

``apply`` is one transaction of a few batched statements whatever the number of jobs: lock and
read the stored seqs, upsert the newer job rows (guarded on ``last_seq``), then attempts, outbox,
timers and checkpoints of the jobs that won. Driver errors never leave this module.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Table, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.adapters import sql_outbox
from app.adapters.sql_errors import refusal_reason, refuses_data
from app.adapters.sql_models import (
    attempts,
    checkpoints,
    jobs,
    outbox,
    timers,
)
from app.adapters.sql_schema import EngineHolder
from app.adapters.sql_snapshots import read_snapshots, snapshot_values
from app.ports import (
    AttemptRow,
    JobRow,
    JobSnapshot,
    OutboxMessage,
    ProjectionUnavailable,
    ProjectionUpdate,
    TimerRow,
    WriteRefused,
)

DEFAULT_PAGE_SIZE = 1000
_IN_CHUNK = 1000  # ids per IN (...) list: far below PostgreSQL's and SQLite's parameter limits

_JOB_COLUMNS = [jobs.c[f.name] for f in fields(JobRow)]
_ATTEMPT_COLUMNS = [attempts.c[f.name] for f in fields(AttemptRow)]


@contextmanager
def _driver_errors(action: str) -> Iterator[None]:
    """Translate driver errors: refused data → WriteRefused, the rest → ProjectionUnavailable."""
    try:
        yield
    except (SQLAlchemyError, UnicodeError) as exc:
        if refuses_data(exc):
            raise WriteRefused(
                f"the projection store rejected {action}: {refusal_reason(exc)}"
            ) from exc
        raise ProjectionUnavailable(f"{action} failed: {getattr(exc, 'orig', exc)!r}") from exc
    except OSError as exc:
        raise ProjectionUnavailable(f"{action} failed: {exc!r}") from exc


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), _IN_CHUNK):
        yield items[start : start + _IN_CHUNK]


def _values(row: object, names: Sequence[str]) -> dict[str, Any]:
    return {name: getattr(row, name) for name in names}


def _check(update: ProjectionUpdate) -> None:
    """Reject an update whose rows belong to another job or that has no seq to compare."""
    job_id = update.job.job_id
    if not isinstance(update.job.last_seq, int):
        raise ValueError(f"job {job_id!r}: last_seq must be an int")
    if any(a.job_id != job_id for a in update.attempts):
        raise ValueError(f"job {job_id!r}: an attempt row names another job")
    if update.timer is not None and update.timer.job_id != job_id:
        raise ValueError(f"job {job_id!r}: the timer names another job")


@dataclass
class _Merged:
    """What the newer updates of one job in a batch add up to, applied in order."""

    job: JobRow
    attempts: dict[int, AttemptRow] = field(default_factory=dict)
    outbox: dict[str, OutboxMessage] = field(default_factory=dict)
    timer: TimerRow | None = None
    snapshot: JobSnapshot | None = None


def _merge_updates(
    updates: Sequence[ProjectionUpdate], stored: Mapping[str, int]
) -> dict[str, _Merged]:
    """Fold the batch per job, skipping every update not newer than what is stored or kept."""
    merged: dict[str, _Merged] = {}
    for item in updates:
        job_id = item.job.job_id
        current = merged.get(job_id)
        seen = current.job.last_seq if current is not None else stored.get(job_id)
        if seen is not None and item.job.last_seq <= seen:
            continue
        if current is None:
            current = merged[job_id] = _Merged(item.job)
        current.job, current.timer, current.snapshot = item.job, item.timer, item.snapshot
        current.attempts.update((a.attempt, a) for a in item.attempts)
        for message in item.outbox:
            current.outbox.setdefault(message.event_id, message)
    return merged


def _upsert(conn: AsyncConnection, table: Table) -> Any:
    """The dialect's ``INSERT`` construct, which offers ``ON CONFLICT``."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def _set_all(statement: Any, table: Table) -> dict[str, Any]:
    return {c.name: statement.excluded[c.name] for c in table.columns if not c.primary_key}


class SqlProjectionStore(EngineHolder):
    """ProjectionStore on PostgreSQL or SQLite; an invalid row makes ``apply`` raise ValueError.

    ``apply`` raises ``WriteRefused`` (a ValueError; it commits nothing) when the database
    refuses a row (a None in a NOT NULL column, a value too long for PostgreSQL) and
    ``ProjectionUnavailable`` when the database cannot be reached, fails transiently or lacks
    the schema (run ``migrate``). An outbox message without ``created_at`` is stamped with the
    time of the ``apply``. Given an engine, pass one from ``make_engine`` (on SQLite its writers
    then wait for the lock instead of failing).
    """

    def __init__(
        self, engine_or_url: AsyncEngine | str, *, page_size: int = DEFAULT_PAGE_SIZE
    ) -> None:
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        super().__init__(engine_or_url)
        self._page_size = page_size

    async def apply(
        self, updates: Sequence[ProjectionUpdate], checkpoints: Mapping[str, str] | None = None
    ) -> None:
        """Commit every newer update (and checkpoint values) in one transaction."""
        for item in updates:
            _check(item)
        now = datetime.now(UTC)
        with _driver_errors("the projection batch"):
            async with self._writer.begin() as conn:
                stored = await self._lock_seqs(conn, sorted({u.job.job_id for u in updates}))
                merged = _merge_updates(updates, stored)
                won = await self._upsert_jobs(conn, [merged[j] for j in sorted(merged)])
                winners = [merged[job_id] for job_id in sorted(won)]
                await self._upsert_attempts(conn, winners)
                await self._insert_outbox(conn, winners, now)
                await self._set_timers(conn, winners)
                await self._upsert_checkpoints(conn, checkpoints or {}, now)

    async def _lock_seqs(self, conn: AsyncConnection, job_ids: Sequence[str]) -> dict[str, int]:
        # FOR UPDATE (PostgreSQL; SQLite holds the write lock already) so that two concurrent
        # batches for one job serialise here and the second sees the first's seq.
        seqs: dict[str, int] = {}
        for chunk in _chunks(job_ids):
            query = (
                select(jobs.c.job_id, jobs.c.last_seq)
                .where(jobs.c.job_id.in_(chunk))
                .order_by(jobs.c.job_id)
                .with_for_update()
            )
            seqs.update((row.job_id, row.last_seq) for row in await conn.execute(query))
        return seqs

    async def _upsert_jobs(self, conn: AsyncConnection, rows: Sequence[_Merged]) -> set[str]:
        """Upsert the job rows (and snapshots); return the ids written (a racing newer row wins)."""
        if not rows:
            return set()
        statement = _upsert(conn, jobs)
        statement = statement.on_conflict_do_update(
            index_elements=[jobs.c.job_id],
            set_=_set_all(statement, jobs),
            where=jobs.c.last_seq < statement.excluded.last_seq,
        ).returning(jobs.c.job_id)
        names = [c.name for c in _JOB_COLUMNS]
        values = [_values(row.job, names) | snapshot_values(row.snapshot) for row in rows]
        result = await conn.execute(statement, values)
        return set(result.scalars())

    async def _upsert_attempts(self, conn: AsyncConnection, winners: Sequence[_Merged]) -> None:
        names = [c.name for c in _ATTEMPT_COLUMNS]
        rows = [_values(a, names) for m in winners for _, a in sorted(m.attempts.items())]
        if not rows:
            return
        statement = _upsert(conn, attempts)
        statement = statement.on_conflict_do_update(
            index_elements=[attempts.c.job_id, attempts.c.attempt],
            set_=_set_all(statement, attempts),
        )
        await conn.execute(statement, rows)

    async def _insert_outbox(
        self, conn: AsyncConnection, winners: Sequence[_Merged], now: datetime
    ) -> None:
        rows = [sql_outbox.outbox_values(m, now) for w in winners for m in w.outbox.values()]
        if rows:
            statement = _upsert(conn, outbox).on_conflict_do_nothing(
                index_elements=[outbox.c.event_id]
            )
            await conn.execute(statement, rows)

    async def _set_timers(self, conn: AsyncConnection, winners: Sequence[_Merged]) -> None:
        rows = [_values(m.timer, ("job_id", "due_at", "kind")) for m in winners if m.timer]
        if rows:
            statement = _upsert(conn, timers)
            statement = statement.on_conflict_do_update(
                index_elements=[timers.c.job_id], set_=_set_all(statement, timers)
            )
            await conn.execute(statement, rows)
        cleared = [m.job.job_id for m in winners if m.timer is None]
        for chunk in _chunks(cleared):
            await conn.execute(delete(timers).where(timers.c.job_id.in_(chunk)))

    async def _upsert_checkpoints(
        self, conn: AsyncConnection, values: Mapping[str, str], now: datetime
    ) -> None:
        if not values:
            return
        rows = [{"name": k, "value": v, "updated_at": now} for k, v in sorted(values.items())]
        statement = _upsert(conn, checkpoints)
        statement = statement.on_conflict_do_update(
            index_elements=[checkpoints.c.name], set_=_set_all(statement, checkpoints)
        )
        await conn.execute(statement, rows)

    async def get_job(self, job_id: str) -> JobRow | None:
        """The job's row, or None if it was never projected."""
        query = select(*_JOB_COLUMNS).where(jobs.c.job_id == job_id)
        with _driver_errors("reading a job"):
            async with self._engine.connect() as conn:
                row = (await conn.execute(query)).one_or_none()
        return None if row is None else JobRow(**row._mapping)

    async def get_attempts(self, job_id: str) -> list[AttemptRow]:
        """The job's attempts ordered by attempt number."""
        query = (
            select(*_ATTEMPT_COLUMNS)
            .where(attempts.c.job_id == job_id)
            .order_by(attempts.c.attempt)
        )
        with _driver_errors("reading attempts"):
            async with self._engine.connect() as conn:
                result = await conn.execute(query)
                return [AttemptRow(**row._mapping) for row in result]

    async def projected_seqs(self, job_ids: Sequence[str]) -> dict[str, int]:
        """``last_seq`` of each known job among ``job_ids``."""
        seqs: dict[str, int] = {}
        with _driver_errors("reading projected seqs"):
            async with self._engine.connect() as conn:
                for chunk in _chunks(sorted(set(job_ids))):
                    query = select(jobs.c.job_id, jobs.c.last_seq).where(jobs.c.job_id.in_(chunk))
                    seqs.update((row.job_id, row.last_seq) for row in await conn.execute(query))
        return seqs

    async def snapshots(self, job_ids: Sequence[str]) -> dict[str, JobSnapshot]:
        """The stored snapshot of each job among ``job_ids`` that has one."""
        found: dict[str, JobSnapshot] = {}
        with _driver_errors("reading snapshots"):
            async with self._engine.connect() as conn:
                for chunk in _chunks(sorted(set(job_ids))):
                    found |= await read_snapshots(conn, chunk)
        return found

    async def all_jobs(self) -> AsyncIterator[JobRow]:
        """Every job row ordered by job_id, one keyset page (one short read) at a time."""
        after: str | None = None
        while True:
            page = await self._jobs_page(after)
            for row in page:
                yield row
            if len(page) < self._page_size:
                return
            after = page[-1].job_id

    async def _jobs_page(self, after: str | None) -> list[JobRow]:
        query = select(*_JOB_COLUMNS).order_by(jobs.c.job_id).limit(self._page_size)
        if after is not None:
            query = query.where(jobs.c.job_id > after)
        with _driver_errors("listing jobs"):
            async with self._engine.connect() as conn:
                return [JobRow(**row._mapping) for row in await conn.execute(query)]

    async def due_timers(self, now: datetime, limit: int) -> list[TimerRow]:
        """Timers with ``due_at <= now``, earliest first (then by job_id)."""
        query = (
            select(timers.c.job_id, timers.c.due_at, timers.c.kind)
            .where(timers.c.due_at <= now)
            .order_by(timers.c.due_at, timers.c.job_id)
            .limit(limit)
        )
        with _driver_errors("reading due timers"):
            async with self._engine.connect() as conn:
                return [TimerRow(**row._mapping) for row in await conn.execute(query)]

    async def claim_due_timers(self, now: datetime, limit: int, hold: timedelta) -> list[TimerRow]:
        """Claim due timers nobody holds until ``now + hold``; concurrent claimers skip them."""
        free = or_(timers.c.claimed_until.is_(None), timers.c.claimed_until <= now)
        due = (
            select(timers.c.job_id)
            .where(timers.c.due_at <= now, free)
            .order_by(timers.c.due_at, timers.c.job_id)
            .limit(limit)
        )
        if self._engine.dialect.name == "postgresql":
            due = due.with_for_update(skip_locked=True)
        claim = (
            update(timers)
            .where(timers.c.job_id.in_(due.scalar_subquery()))
            .values(claimed_until=now + hold)
            .returning(timers.c.job_id, timers.c.due_at, timers.c.kind)
        )
        with _driver_errors("claiming due timers"):
            async with self._writer.begin() as conn:
                rows = [TimerRow(**row._mapping) for row in await conn.execute(claim)]
        return sorted(rows, key=lambda t: (t.due_at, t.job_id))

    async def next_timer_at(self) -> datetime | None:
        """The earliest ``due_at`` of any timer."""
        with _driver_errors("reading the next timer"):
            async with self._engine.connect() as conn:
                value: datetime | None = await conn.scalar(select(func.min(timers.c.due_at)))
        return value

    async def next_claimable_at(self, now: datetime) -> datetime | None:
        """The earliest moment a timer can be claimed (its due time or its claim's end).

        Two reads through the due_at index: the earliest timer held by no claim counted (none,
        one ending before it is due, or one on a timer not due by ``now``), and the earliest
        end of a claim on a timer due by ``now``.
        """
        c = timers.c
        free = or_(c.claimed_until.is_(None), c.claimed_until <= c.due_at, c.due_at > now)
        unheld = select(c.due_at).where(free).order_by(c.due_at).limit(1)
        held = select(func.min(c.claimed_until)).where(c.due_at <= now, c.claimed_until > c.due_at)
        query = select(unheld.scalar_subquery(), held.scalar_subquery())
        with _driver_errors("reading the next timer"):
            async with self._engine.connect() as conn:
                row = (await conn.execute(query)).one()
        moments: list[datetime] = [m for m in row if m is not None]
        return min(moments, default=None)

    async def pending_outbox(self, limit: int) -> list[OutboxMessage]:
        """Unpublished outbox messages, claimed or not: oldest ``created_at`` first, then by id."""
        with _driver_errors("reading the outbox"):
            async with self._engine.connect() as conn:
                result = await conn.execute(sql_outbox.pending_query(limit))
                return [OutboxMessage(**row._mapping) for row in result]

    async def claim_outbox(
        self, owner: str, limit: int, now: datetime, lease: timedelta
    ) -> list[OutboxMessage]:
        """Claim the oldest unpublished rows of jobs no other owner holds (see sql_outbox)."""
        with _driver_errors("claiming outbox messages"):
            async with self._writer.begin() as conn:
                return await sql_outbox.claim(conn, owner, limit, now, lease)

    async def release_outbox(self, owner: str, event_ids: Sequence[str]) -> None:
        """End ``owner``'s claims on these messages; others' claims are left be."""
        with _driver_errors("releasing outbox claims"):
            async with self._writer.begin() as conn:
                for chunk in _chunks(sorted(set(event_ids))):
                    await conn.execute(sql_outbox.release_statement(owner, chunk))

    async def mark_published(self, event_ids: Sequence[str], at: datetime) -> None:
        """Stamp the messages as published at ``at``; a published one keeps its first stamp."""
        with _driver_errors("marking messages published"):
            async with self._writer.begin() as conn:
                for chunk in _chunks(sorted(set(event_ids))):
                    await conn.execute(sql_outbox.mark_statement(chunk, at))

    async def get_checkpoint(self, name: str) -> str | None:
        """The checkpoint's value, or None if it was never set."""
        query = select(checkpoints.c.value).where(checkpoints.c.name == name)
        with _driver_errors("reading a checkpoint"):
            async with self._engine.connect() as conn:
                value: str | None = await conn.scalar(query)
        return value

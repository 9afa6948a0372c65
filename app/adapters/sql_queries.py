"""``JobQueries`` on the SQL projections (PostgreSQL or SQLite), read-only.

Every filter value is a bound parameter compared with ``=`` / ``<`` on a typed column: nothing a
caller sends becomes SQL text. Pages are keyset pages on (updated_at, job_id), so a page costs the
same however deep it is.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, func, literal, or_, select
from sqlalchemy import tuple_ as sql_tuple
from sqlalchemy.exc import DBAPIError, SQLAlchemyError, StatementError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.adapters.sql_models import Identifier, UtcDateTime, attempts, jobs
from app.adapters.sql_schema import EngineHolder
from app.ports import (
    EndedCount,
    GroupCount,
    InvalidQuery,
    JobFilter,
    JobRow,
    LatencyRow,
    PageKey,
    ProjectionUnavailable,
)

_JOB_COLUMNS = [jobs.c[f.name] for f in fields(JobRow)]
_MINUTE_TEXT_LENGTH = len("YYYY-MM-DD HH:MM")


# SQLSTATE class 22: data exception (a value the database cannot take).
_DATA_EXCEPTION = "22"


@contextmanager
def _read_errors(action: str) -> Iterator[None]:
    """A refused value → ``InvalidQuery``; any other driver error → ``ProjectionUnavailable``."""
    try:
        yield
    except DBAPIError as exc:
        sqlstate = getattr(exc.orig, "sqlstate", None)
        if isinstance(sqlstate, str) and sqlstate.startswith(_DATA_EXCEPTION):
            raise InvalidQuery(f"the projection store refused a value while {action}") from exc
        raise ProjectionUnavailable(f"{action} failed: {exc.orig!r}") from exc
    except StatementError as exc:
        raise InvalidQuery(f"the projection store refused a value while {action}") from exc
    except (SQLAlchemyError, OSError) as exc:
        raise ProjectionUnavailable(f"{action} failed: {exc!r}") from exc


def list_jobs_query(filters: JobFilter, *, limit: int, after: PageKey | None) -> Select[Any]:
    """The page query: equality filters, the updated_at range, then the keyset condition."""
    conditions: list[ColumnElement[bool]] = [jobs.c.updated_at.is_not(None)]
    conditions += [jobs.c[name] == value for name, value in filters.equalities().items()]
    if filters.updated_since is not None:
        conditions.append(jobs.c.updated_at >= filters.updated_since)
    if filters.updated_until is not None:
        conditions.append(jobs.c.updated_at < filters.updated_until)
    if after is not None:
        key = sql_tuple(literal(after.updated_at, UtcDateTime()), literal(after.job_id, Identifier))
        conditions.append(sql_tuple(jobs.c.updated_at, jobs.c.job_id) < key)
    return (
        select(*_JOB_COLUMNS)
        .where(*conditions)
        .order_by(jobs.c.updated_at.desc(), jobs.c.job_id.desc())
        .limit(limit)
    )


def _minute_text(dialect: str) -> ColumnElement[str]:
    """``attempts.ended_at`` cut to its UTC minute, as ``YYYY-MM-DD HH:MM`` text."""
    if dialect == "postgresql":
        utc = func.timezone("UTC", attempts.c.ended_at)
        return func.to_char(utc, "YYYY-MM-DD HH24:MI")
    # SQLite holds the UTC instant as text "YYYY-MM-DD HH:MM:SS.ffffff". Its date functions
    # round to milliseconds (12:59:59.9999 would land in 13:00), so cut the text instead.
    return func.substr(attempts.c.ended_at, 1, _MINUTE_TEXT_LENGTH)


class SqlJobQueries(EngineHolder):
    """Read queries for the API and ``jobtrail jobs`` on the projection tables.

    Given a URL it owns (and ``close`` disposes of) its engine; given an engine it only borrows it.
    """

    def __init__(self, engine_or_url: AsyncEngine | str) -> None:
        super().__init__(engine_or_url)

    async def list_jobs(
        self, filters: JobFilter, *, limit: int, after: PageKey | None
    ) -> list[JobRow]:
        """Up to ``limit`` matching rows after ``after``, by updated_at desc then job_id desc."""
        query = list_jobs_query(filters, limit=limit, after=after)
        with _read_errors("listing jobs"):
            async with self._engine.connect() as conn:
                return [JobRow(**row._mapping) for row in await conn.execute(query)]

    async def count_jobs(self) -> list[GroupCount]:
        """Job counts grouped by (queue, status) (an index-only scan of ix_jobs_queue_status)."""
        query = select(jobs.c.queue, jobs.c.status, func.count().label("n")).group_by(
            jobs.c.queue, jobs.c.status
        )
        with _read_errors("counting jobs"):
            async with self._engine.connect() as conn:
                rows = await conn.execute(query)
                return [GroupCount(row.queue, row.status, row.n) for row in rows]

    async def attempts_ended(self, since: datetime, until: datetime) -> list[EndedCount]:
        """Attempts with ``since <= ended_at < until``, counted per minute and outcome."""
        with _read_errors("counting ended attempts"):
            async with self._engine.connect() as conn:
                minute = _minute_text(conn.dialect.name).label("minute")
                query = (
                    select(minute, attempts.c.outcome, func.count().label("n"))
                    .where(
                        attempts.c.ended_at >= since,
                        attempts.c.ended_at < until,
                        attempts.c.outcome.is_not(None),
                    )
                    .group_by(minute, attempts.c.outcome)
                )
                rows = list(await conn.execute(query))
        return [
            EndedCount(datetime.fromisoformat(row.minute).replace(tzinfo=UTC), row.outcome, row.n)
            for row in rows
        ]

    async def latency_rows(self, since: datetime, until: datetime) -> list[LatencyRow]:
        """Attempts reserved or ended in ``[since, until)`` (through ix_attempts_reserved_at and
        ix_attempts_ended_at), joined to their job's kind, tenant and submission."""
        a = attempts.c
        query = (
            select(
                a.job_id,
                a.attempt,
                a.pool,
                jobs.c.job_type,
                jobs.c.priority,
                jobs.c.tenant,
                jobs.c.submitted_at,
                a.queued_at,
                a.reserved_at,
                a.ended_at,
                a.outcome,
            )
            .join(jobs, jobs.c.job_id == a.job_id)
            .where(
                or_(
                    and_(a.reserved_at >= since, a.reserved_at < until),
                    and_(a.ended_at >= since, a.ended_at < until),
                )
            )
        )
        with _read_errors("reading attempt latencies"):
            async with self._engine.connect() as conn:
                return [LatencyRow(**row._mapping) for row in await conn.execute(query)]

    async def ping(self) -> None:
        """A trivial query on the jobs table; raises ``ProjectionUnavailable`` if it fails."""
        with _read_errors("pinging the projection store"):
            async with self._engine.connect() as conn:
                await conn.execute(select(jobs.c.job_id).limit(1))

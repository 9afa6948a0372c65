"""Which driver errors are a refused write and which an outage, with the databases' real errors.

Like httpx's tests of ``map_httpcore_exceptions``: each case makes PostgreSQL, SQLite or MongoDB
raise its own error, then checks what the adapter (or the classifier in app/adapters/sql_errors.py)
turns it into. A refusal must be ``WriteRefused`` (never retried as an outage); a unique-key
violation must stay the log's dedupe; an unreachable server stays ``LogUnavailable``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.adapters import mongo_log
from app.adapters.mongo_log import MongoEventLog
from app.adapters.sql_errors import is_unique_violation, refuses_data
from app.adapters.sql_log import SqlEventLog
from app.adapters.sql_schema import migrate
from app.ports import AppendStatus, LogUnavailable, WriteRefused
from tests.contract.test_event_log import submitted

T0 = datetime(2026, 12, 3, tzinfo=UTC)

# statement, parameters, refused (True) or a unique-key violation (False); None: SQLite takes it
CASES: dict[str, tuple[str, dict[str, Any], bool | None]] = {
    "value too long": ("INSERT INTO t VALUES (1, :s, 1)", {"s": "abcdefgh"}, True),
    "NUL in text": ("INSERT INTO t VALUES (2, :s, 1)", {"s": "a\x00b"}, True),
    "integer out of range": ("INSERT INTO t VALUES (:i, 'a', 1)", {"i": 2**40}, True),
    "lone surrogate": ("INSERT INTO t VALUES (3, :s, 1)", {"s": "\ud800"}, True),
    "check constraint": ("INSERT INTO t VALUES (4, 'a', 13)", {}, True),
    "not null": ("INSERT INTO t VALUES (5, 'a', NULL)", {}, True),
    "unique key": ("INSERT INTO t VALUES (6, 'a', 1)", {}, False),
}
SQLITE_TAKES = {"value too long", "NUL in text", "integer out of range"}


@pytest.fixture(params=["postgresql", "sqlite"])
def db_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    if request.param == "postgresql":
        return str(request.getfixturevalue("pg_url"))
    return f"sqlite+aiosqlite:///{tmp_path / 'refusals.db'}"


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    made = create_async_engine(db_url)
    async with made.begin() as conn:
        await conn.execute(
            text(
                "CREATE TABLE t (id INT PRIMARY KEY, s VARCHAR(5), n INT NOT NULL, CHECK (n <> 13))"
            )
        )
        await conn.execute(text("INSERT INTO t VALUES (6, 'a', 1)"))
    yield made
    await made.dispose()


@pytest.mark.parametrize("case", CASES)
async def test_the_databases_own_errors_are_classified(engine: AsyncEngine, case: str) -> None:
    statement, params, refused = CASES[case]
    sqlite = engine.dialect.name == "sqlite"
    try:
        async with engine.begin() as conn:
            await conn.execute(text(statement), params)
    except Exception as exc:  # the driver's error, as SQLAlchemy (or aiosqlite) raises it
        error: BaseException = exc
    else:
        assert sqlite and case in SQLITE_TAKES, f"{case}: the database took it"
        return
    assert is_unique_violation(error) is (refused is False), repr(error)
    assert refuses_data(error) is True, repr(error)  # the projection store refuses both


async def test_an_outage_is_not_a_refusal(engine: AsyncEngine) -> None:
    await engine.dispose()
    broken = create_async_engine("postgresql+asyncpg://postgres@127.0.0.1:1/none")
    try:
        with pytest.raises(
            OSError, match=r"(?i)connect"
        ) as caught:  # refused connection (SQLAlchemy passes it on)
            async with broken.connect():
                pass
        assert not refuses_data(caught.value) and not is_unique_violation(caught.value)
    finally:
        await broken.dispose()


@pytest.fixture
async def sql_log(db_url: str) -> AsyncIterator[SqlEventLog]:
    url = db_url
    await migrate(url)
    if url.startswith("postgresql"):
        made = create_async_engine(url)
        async with made.begin() as conn:
            await conn.execute(
                text(
                    "ALTER TABLE jobtrail_events ADD CONSTRAINT no_poison "
                    "CHECK (job_id <> 'poison')"
                )
            )
        await made.dispose()
    else:  # SQLite cannot add a CHECK to a table: a trigger refuses the row instead
        made = create_async_engine(url)
        async with made.begin() as conn:
            await conn.execute(
                text(
                    "CREATE TRIGGER no_poison BEFORE INSERT ON jobtrail_events "
                    "WHEN NEW.job_id = 'poison' BEGIN "
                    "SELECT RAISE(ABORT, 'no_poison: refused'); END"
                )
            )
        await made.dispose()
    log = SqlEventLog(url)
    yield log
    await log.close()


async def test_the_sql_log_reports_a_refusal_as_write_refused(sql_log: SqlEventLog) -> None:
    good = submitted("good")
    assert (await sql_log.append(good, T0)).status is AppendStatus.APPENDED
    with pytest.raises(WriteRefused, match="no_poison"):
        await sql_log.append(submitted("poison"), T0)
    with pytest.raises(WriteRefused, match="no_poison"):
        await sql_log.append_many([submitted("other"), submitted("poison")], T0)
    # The unique keys are still how a duplicate is recognised: not a refusal.
    again = await sql_log.append_many([good, submitted("other")], T0)
    assert [o.status for o in again] == [AppendStatus.DUPLICATE, AppendStatus.APPENDED]
    assert await sql_log.count() == 2


async def test_mongodb_refusals_are_write_refused_and_outages_log_unavailable(
    mongo_url: str,
) -> None:
    log = MongoEventLog(mongo_url)
    try:
        await log.ensure_schema()
        events = log._events
        refused = "MongoDB refused"
        with pytest.raises(WriteRefused, match=refused), mongo_log._translated("append"):
            await events.insert_one({"data": "x" * (17 * 1024 * 1024)})  # DocumentTooLarge
        with pytest.raises(WriteRefused, match=refused), mongo_log._translated("append"):
            await events.insert_one({"data": object()})  # not encodable as BSON
        await events.insert_one({"event_id": "e-1", "job_id": "j", "seq": 1})
        # A duplicate key the adapter did not expect to meet there: not the data's fault.
        with pytest.raises(LogUnavailable), mongo_log._translated("append"):
            await events.insert_one({"event_id": "e-1", "job_id": "j", "seq": 2})
    finally:
        await log.close()

"""The SQL log runs under a role that may only insert and read events: no update, no delete."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import asyncpg
import pytest

from app.adapters.sql_log import SqlEventLog
from app.adapters.sql_schema import migrate
from app.domain.chain import verify_chain
from app.domain.events import Heartbeat, Submitted
from app.ports import AppendStatus

pytestmark = pytest.mark.integration

GRANTS = """
CREATE ROLE {role} LOGIN;
GRANT CONNECT ON DATABASE "{db}" TO {role};
GRANT USAGE ON SCHEMA public TO {role};
GRANT SELECT, INSERT ON jobtrail_events TO {role};
GRANT USAGE ON SEQUENCE jobtrail_events_id_seq TO {role};
"""


async def _admin(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url.replace("+asyncpg", ""))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
def writer_url(pg_url: str) -> Iterator[str]:
    """The log's database, migrated by the owner, and a URL for an insert-and-read-only role."""
    role = f"jt_writer_{uuid.uuid4().hex[:8]}"
    db = pg_url.rsplit("/", 1)[1]
    asyncio.run(migrate(pg_url))
    asyncio.run(_admin(pg_url, GRANTS.format(role=role, db=db)))
    host = pg_url.split("@", 1)[1]
    yield f"postgresql+asyncpg://{role}@{host}"
    asyncio.run(_admin(pg_url, f'REVOKE ALL ON DATABASE "{db}" FROM {role}; DROP OWNED BY {role};'))
    asyncio.run(_admin(pg_url, f"DROP ROLE {role};"))


def submitted(job: str) -> Submitted:
    return Submitted(
        event_id=uuid.uuid4(),
        job_id=job,
        occurred_at=datetime.now(UTC),
        attempt=1,
        source="cloud",
        job_type="sync",
        model="m",
        priority="bulk",
        tenant="t",
        pool="p",
        queue="q",
    )


async def test_the_log_works_with_insert_and_select_only(writer_url: str) -> None:
    log = SqlEventLog(writer_url)
    try:
        first = submitted("least-1")
        outcomes = await log.append_many(
            [
                first,
                Heartbeat(
                    event_id=uuid.uuid4(),
                    job_id="least-1",
                    occurred_at=datetime.now(UTC),
                    attempt=1,
                    source="n",
                    node_id="n",
                ),
            ],
            datetime.now(UTC),
        )
        assert [o.status for o in outcomes] == [AppendStatus.APPENDED] * 2
        assert (await log.append(first, datetime.now(UTC))).status is AppendStatus.DUPLICATE
        assert verify_chain("least-1", await log.read_job_raw("least-1")) is None
    finally:
        await log.close()


async def test_the_role_cannot_update_or_delete_an_event(writer_url: str) -> None:
    log = SqlEventLog(writer_url)
    try:
        await log.append(submitted("least-2"), datetime.now(UTC))
    finally:
        await log.close()
    conn = await asyncpg.connect(writer_url.replace("+asyncpg", ""))
    try:
        for statement in (
            "UPDATE jobtrail_events SET data = '{}' WHERE job_id = 'least-2'",
            "DELETE FROM jobtrail_events WHERE job_id = 'least-2'",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(statement)
    finally:
        await conn.close()


async def test_schema_changes_are_refused_to_the_role(writer_url: str) -> None:
    log = SqlEventLog(writer_url)
    try:
        # The table exists, so ensure_schema creates nothing; a fresh table would be refused.
        await log.ensure_schema()
    finally:
        await log.close()
    conn = await asyncpg.connect(writer_url.replace("+asyncpg", ""))
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("DROP TABLE jobtrail_events")
    finally:
        await conn.close()

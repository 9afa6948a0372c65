"""The MongoDB log runs under the role docs/configuration.md grants: insert and find, no more.

On SecantusDB (the MongoDB-speaking test server) started with ``--auth``: the users and the role
are created first, without it, as an administrator would. SecantusDB enforces the actions of a
role; unlike MongoDB it did not confine this role to its two collections in a probe (an insert
into another collection of the database was accepted), so that part is not asserted here.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pymongo import AsyncMongoClient
from pymongo.errors import OperationFailure

from app.adapters.mongo_log import COLLECTION, MongoEventLog
from app.domain.chain import verify_chain
from app.domain.events import Heartbeat
from app.ports import AppendStatus, LogUnavailable
from scripts.private_servers import PrivateSecantus
from tests.integration.test_least_privilege import submitted

pytestmark = pytest.mark.integration

DATABASE = "jobtrail"
# The role of docs/configuration.md, as it is written there.
ROLE = {
    "createRole": "jobtrailLogWriter",
    "privileges": [
        {
            "resource": {"db": DATABASE, "collection": "events"},
            "actions": ["find", "insert", "createIndex"],
        },
        {
            "resource": {"db": DATABASE, "collection": "anchors"},
            "actions": ["find", "insert", "createIndex"],
        },
    ],
    "roles": [],
}
UNAUTHORIZED = 13


@pytest.fixture
async def writer_url(tmp_path: Path) -> AsyncIterator[str]:
    server = PrivateSecantus(tmp_path)
    server.start()
    try:
        admin: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(server.url(DATABASE))
        try:
            await admin[DATABASE].command(ROLE)
            await admin[DATABASE].command(
                "createUser", "jobtrail", pwd="s3cret", roles=["jobtrailLogWriter"]
            )
        finally:
            await admin.close()
        server.stop()
        server.auth = True
        server.start()
        yield server.url(DATABASE).replace("//", "//jobtrail:s3cret@", 1) + "&authSource=jobtrail"
    finally:
        server.close()


async def test_the_log_works_with_insert_and_find_only(writer_url: str) -> None:
    log = MongoEventLog(writer_url)
    try:
        await log.ensure_schema()
        first = submitted("least-1")
        beat = Heartbeat(
            event_id=uuid.uuid4(),
            job_id="least-1",
            occurred_at=datetime.now(UTC),
            attempt=1,
            source="n",
            node_id="n",
        )
        outcomes = await log.append_many([first, beat], datetime.now(UTC))
        assert [o.status for o in outcomes] == [AppendStatus.APPENDED] * 2
        assert (await log.append(first, datetime.now(UTC))).status is AppendStatus.DUPLICATE
        assert verify_chain("least-1", await log.read_job_raw("least-1")) is None
    finally:
        await log.close()


async def test_the_role_cannot_update_delete_or_drop_an_event(writer_url: str) -> None:
    log = MongoEventLog(writer_url)
    try:
        await log.ensure_schema()
        await log.append(submitted("least-2"), datetime.now(UTC))
    finally:
        await log.close()
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(writer_url)
    events = client[DATABASE][COLLECTION]
    try:
        attempts = {
            "update": events.update_one({"job_id": "least-2"}, {"$set": {"data": {}}}),
            "replace": events.replace_one({"job_id": "least-2"}, {"job_id": "least-2"}),
            "delete": events.delete_many({"job_id": "least-2"}),
            "drop": events.drop(),
        }
        for name, attempt in attempts.items():
            with pytest.raises(OperationFailure) as refused:
                await attempt
            assert refused.value.code == UNAUTHORIZED, name
        assert await events.count_documents({"job_id": "least-2"}) == 1
    finally:
        await client.close()


async def test_a_wrong_password_is_refused(writer_url: str) -> None:
    log = MongoEventLog(writer_url.replace("s3cret", "wrong"))
    try:
        with pytest.raises(LogUnavailable, match=r"(?i)auth"):
            await log.ensure_schema()
    finally:
        await log.close()

"""The Alembic migrations on real PostgreSQL and SQLite databases."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import MetaData, inspect, text
from sqlalchemy.engine import Connection

from app.adapters.anchor_store import anchor_metadata
from app.adapters.sql_log import log_metadata
from app.adapters.sql_models import LIST_FILTERS, projection_metadata
from app.adapters.sql_schema import alembic_config, make_engine, migrate
from app.ports import ProjectionUnavailable
from tests import servers

pytestmark = pytest.mark.integration

TABLES = {
    "jobs",
    "attempts",
    "outbox",
    "timers",
    "checkpoints",
    "jobtrail_events",
    "jobtrail_anchors",
    "ring_barriers",
    "ring_arrivals",
    "trackers",
}
JOB_INDEXES = {f"ix_jobs_{c}_page" for c in LIST_FILTERS} | {"ix_jobs_page"}
HEAD = "0008"


@pytest.fixture(params=["postgresql", "sqlite"])
def url(request: pytest.FixtureRequest) -> str:
    name = "pg_url" if request.param == "postgresql" else "sqlite_url"
    return str(request.getfixturevalue(name))


def _schema(connection: Connection) -> dict[str, Any]:
    inspector = inspect(connection)
    tables = set(inspector.get_table_names())
    version = None
    if "alembic_version" in tables:
        version = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    indexes = {t: {ix["name"] for ix in inspector.get_indexes(t)} for t in tables}
    return {"tables": tables - {"alembic_version"}, "indexes": indexes, "version": version}


async def schema(url: str) -> dict[str, Any]:
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(_schema)
    finally:
        await engine.dispose()


def _differences(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection)
    metadata = [projection_metadata, log_metadata, anchor_metadata]
    return list(compare_metadata(context, metadata))  # type: ignore[arg-type]


ROOT = Path(__file__).resolve().parents[2]
"""The checkout, where alembic.ini serves the ``alembic`` command."""


def alembic_cli(*args: str, env: dict[str, str] | None = None) -> None:
    alembic = Path(sys.executable).with_name("alembic")
    completed = subprocess.run(
        [str(alembic), *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr


async def test_migrate_creates_every_table_and_index(url: str) -> None:
    await migrate(url)
    found = await schema(url)
    assert found["tables"] == TABLES
    assert found["version"] == HEAD
    assert found["indexes"]["jobs"] == JOB_INDEXES
    assert found["indexes"]["outbox"] == {"ix_outbox_unpublished", "ix_outbox_unpublished_job"}
    assert found["indexes"]["timers"] == {"ix_timers_due_at"}


async def test_the_migrated_schema_matches_the_models(url: str) -> None:
    await migrate(url)
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            assert await conn.run_sync(_differences) == []
    finally:
        await engine.dispose()


async def test_migrating_twice_is_a_no_op(url: str) -> None:
    await migrate(url)
    engine = make_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO checkpoints (name, value, updated_at) VALUES ('cp', 'kept', :at)"
                ),
                {"at": datetime(2025, 1, 1, tzinfo=UTC)},
            )
        await migrate(url)
        async with engine.connect() as conn:
            value = (await conn.execute(text("SELECT value FROM checkpoints"))).scalar()
        assert value == "kept"
    finally:
        await engine.dispose()
    assert (await schema(url))["version"] == HEAD


async def test_downgrade_to_base_then_upgrade_head_with_the_cli(url: str) -> None:
    await migrate(url)
    await asyncio.to_thread(alembic_cli, "-x", f"url={url}", "downgrade", "base")
    emptied = await schema(url)
    assert emptied["tables"] == set()
    assert emptied["version"] is None
    await asyncio.to_thread(alembic_cli, "upgrade", "head", env={"JOBTRAIL_SQL_URL": url})
    assert (await schema(url))["tables"] == TABLES


async def test_the_url_attribute_drives_env_py(url: str) -> None:
    config = alembic_config()
    config.attributes["url"] = url
    # env.py runs its own event loop, so the synchronous command runs in a worker thread.
    await asyncio.to_thread(command.upgrade, config, "head")
    assert (await schema(url))["tables"] == TABLES
    await asyncio.to_thread(command.downgrade, config, "base")
    assert (await schema(url))["tables"] == set()


async def test_migrating_an_unreachable_database_raises_projection_unavailable() -> None:
    port = servers.free_port()
    with pytest.raises(ProjectionUnavailable):
        await migrate(f"postgresql+asyncpg://postgres@127.0.0.1:{port}/jobtrail")


def test_metadata_names_every_table() -> None:
    tables = MetaData()
    for metadata in (projection_metadata, log_metadata, anchor_metadata):
        for table in metadata.tables.values():
            table.to_metadata(tables)
    assert set(tables.tables) == TABLES

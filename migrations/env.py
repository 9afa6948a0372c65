"""Alembic environment (async template shape) for the projections and the SQL event log.

The database comes from, in order: a connection handed over in ``config.attributes["connection"]``
(``app.adapters.sql_schema.migrate``), ``config.attributes["url"]``, ``-x url=...``, or the
``JOBTRAIL_SQL_URL`` environment variable.
"""

from __future__ import annotations

import asyncio
import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import MetaData
from sqlalchemy.engine import Connection

from app.adapters.anchor_store import anchor_metadata
from app.adapters.sql_log import log_metadata
from app.adapters.sql_models import projection_metadata
from app.adapters.sql_schema import make_engine

config = context.config

if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata: list[MetaData] = [projection_metadata, log_metadata, anchor_metadata]


def include_name(name: str | None, type_: str, parent_names: object) -> bool:
    """Leave the tables of a blue/green rebuild (``*__previous``, ``*__rebuild``) alone."""
    del parent_names
    return not (type_ == "table" and (name or "").endswith(("__previous", "__rebuild")))


def database_url() -> str:
    """The URL to migrate, from the first source that names one."""
    url = (
        config.attributes.get("url")
        or context.get_x_argument(as_dictionary=True).get("url")
        or os.environ.get("JOBTRAIL_SQL_URL")
    )
    if not url:
        raise RuntimeError("no database URL: pass -x url=... or set JOBTRAIL_SQL_URL")
    return str(url)


def run_migrations_offline() -> None:
    """Emit the SQL of the migrations instead of running them (``alembic upgrade --sql``)."""
    context.configure(
        url=database_url(),
        target_metadata=target_metadata,
        include_name=include_name,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def do_run_migrations(connection: Connection) -> None:
    """Run the migrations on a synchronous connection (batch mode so SQLite can alter tables)."""
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        include_name=include_name,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations() -> None:
    """Open an async engine on the URL and run the migrations through it."""
    engine = make_engine(database_url())
    try:
        async with engine.connect() as connection:
            await connection.run_sync(do_run_migrations)
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    """Run the migrations on the handed-over connection, or on a fresh async engine."""
    connection = config.attributes.get("connection")
    if connection is not None:
        do_run_migrations(connection)
    else:
        asyncio.run(run_async_migrations())


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()

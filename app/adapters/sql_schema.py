"""Engines for the SQL stores and the programmatic ``alembic upgrade head``."""

from __future__ import annotations

from importlib.resources import as_file, files
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.ports import ProjectionUnavailable

MIGRATIONS_PACKAGE = "app.migrations"
"""Where the Alembic scripts are: ``migrations/`` of the repository, installed under this name."""
BEGIN_IMMEDIATE = "jobtrail_begin_immediate"
"""Execution option: on SQLite, open write transactions with ``BEGIN IMMEDIATE``."""

_SQLITE_TIMEOUT_SECONDS = 30


_ASYNC_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
}


def async_url(url: str | URL) -> URL:
    """``url`` with the async driver filled in when it names none (``sqlite://``, ``postgresql://``)."""
    parsed = make_url(url)
    driver = _ASYNC_DRIVERS.get(parsed.drivername)
    return parsed if driver is None else parsed.set(drivername=driver)


def make_engine(url: str | URL) -> AsyncEngine:
    """An async engine tuned for the projections: WAL + busy timeout on SQLite, pre-ping on PG."""
    parsed = async_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed)
    return create_async_engine(
        parsed, pool_pre_ping=True, pool_size=10, max_overflow=10, connect_args={"timeout": 10}
    )


class EngineHolder:
    """The engine of a SQL adapter: borrowed when given one, or made from a URL and then owned
    (``close`` disposes of only an owned one). ``_writer`` begins SQLite writes IMMEDIATE."""

    def __init__(self, engine_or_url: AsyncEngine | str) -> None:
        self._owns_engine = isinstance(engine_or_url, str)
        self._engine = (
            make_engine(engine_or_url) if isinstance(engine_or_url, str) else engine_or_url
        )
        self._writer = self._engine.execution_options(**{BEGIN_IMMEDIATE: True})

    @property
    def engine(self) -> AsyncEngine:
        """To share with another adapter of the same database (one pool, not several)."""
        return self._engine

    async def close(self) -> None:
        """Dispose of the engine if this adapter made it."""
        if self._owns_engine:
            await self._engine.dispose()


def _sqlite_engine(url: URL) -> AsyncEngine:
    engine = create_async_engine(url, connect_args={"timeout": _SQLITE_TIMEOUT_SECONDS})
    event.listen(engine.sync_engine, "connect", _sqlite_on_connect)
    event.listen(engine.sync_engine, "begin", _sqlite_on_begin)
    return engine


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # The driver's own implicit BEGIN is switched off so that _sqlite_on_begin decides how a
    # transaction starts (and DDL is transactional too).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={_SQLITE_TIMEOUT_SECONDS * 1000}")
    finally:
        cursor.close()


def _sqlite_on_begin(conn: Connection) -> None:
    # A writer takes the write lock up front, so concurrent writers wait (busy timeout) instead
    # of failing when a deferred read transaction cannot be upgraded.
    immediate = conn.get_execution_options().get(BEGIN_IMMEDIATE, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def alembic_config() -> Config:
    """The Alembic configuration of the installed package, independent of the working directory.

    The scripts are found through ``importlib.resources``, so an editable checkout, a wheel and
    the Docker image migrate alike; no alembic.ini is needed (it serves the ``alembic`` command
    in a checkout only).
    """
    config = Config()
    config.set_main_option("script_location", migrations_dir())
    config.set_main_option("path_separator", "os")
    config.attributes["configure_logger"] = False
    return config


def migrations_dir() -> str:
    """The directory of the Alembic scripts (an installed package is always a real directory)."""
    with as_file(files(MIGRATIONS_PACKAGE)) as path:
        if not (path / "env.py").is_file():
            raise ProjectionUnavailable(f"the Alembic scripts are missing from {path}")
        return str(path)


async def migrate(url: str | URL) -> None:
    """Bring the database at ``url`` to the newest schema (``alembic upgrade head``); idempotent."""
    engine = make_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_upgrade_head)
    except (SQLAlchemyError, OSError) as exc:
        raise ProjectionUnavailable(f"cannot migrate the SQL database: {exc}") from exc
    finally:
        await engine.dispose()


def _upgrade_head(connection: Connection) -> None:
    config = alembic_config()
    # env.py runs on this connection instead of opening its own (and its own event loop).
    config.attributes["connection"] = connection
    command.upgrade(config, "head")

"""Membership on the projection database: table ``trackers``, one heartbeat row per tracker.

Times are the database's clock (seconds since the epoch), so trackers on machines whose clocks
disagree still agree on who is alive; a test may pass a clock of its own instead, to move time
itself. Driver errors become ``ProjectionUnavailable``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import delete, func, literal, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.adapters.sql_models import trackers
from app.adapters.sql_schema import EngineHolder
from app.adapters.sql_store import _driver_errors, _upsert


def _db_now(conn: AsyncConnection) -> Any:
    """The database's current time in seconds since the epoch, as an SQL expression."""
    if conn.dialect.name == "postgresql":
        return func.extract("epoch", func.clock_timestamp())
    return (func.julianday("now") - literal(2440587.5)) * literal(86400.0)


class SqlMembership(EngineHolder):
    """Membership on PostgreSQL or SQLite (the migrated projection database)."""

    def __init__(
        self, engine_or_url: AsyncEngine | str, clock: Callable[[], float] | None = None
    ) -> None:
        """``clock``: seconds since the epoch; None (production) reads the database's clock."""
        super().__init__(engine_or_url)
        self._clock = clock

    async def beat(self, member: str, ttl: float) -> list[str]:
        """Record ``member`` alive for ``ttl`` more seconds; the live members, sorted."""
        with _driver_errors("a tracker heartbeat"):
            async with self._writer.begin() as conn:
                now = await self._now(conn)
                statement = _upsert(conn, trackers).values(member=member, expires=now + ttl)
                await conn.execute(
                    statement.on_conflict_do_update(
                        index_elements=[trackers.c.member],
                        set_={"expires": statement.excluded.expires},
                    )
                )
                await conn.execute(delete(trackers).where(trackers.c.expires < now))
                live = await conn.scalars(select(trackers.c.member).order_by(trackers.c.member))
                return list(live.all())

    async def _now(self, conn: AsyncConnection) -> float:
        if self._clock is not None:
            return self._clock()
        return float(await conn.scalar(select(_db_now(conn))) or 0)  # PostgreSQL: Decimal

    async def leave(self, member: str) -> None:
        """Forget ``member`` now."""
        with _driver_errors("a tracker leaving"):
            async with self._writer.begin() as conn:
                await conn.execute(delete(trackers).where(trackers.c.member == member))

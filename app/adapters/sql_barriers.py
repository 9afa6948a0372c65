"""The BarrierStore on the projection database: tables ``ring_barriers`` and ``ring_arrivals``.

Every tracker of a deployment shares this database, so the barrier of the partition ring
(app/services/ring.py) is coordinated here. Driver errors become ``ProjectionUnavailable``.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from app.adapters.sql_models import ring_arrivals, ring_barriers
from app.adapters.sql_schema import EngineHolder
from app.adapters.sql_store import _driver_errors, _upsert


class SqlBarrierStore(EngineHolder):
    """BarrierStore on PostgreSQL or SQLite (the migrated projection database)."""

    def __init__(self, engine_or_url: AsyncEngine | str) -> None:
        super().__init__(engine_or_url)

    async def begin_barrier(self, now: datetime) -> str:
        """The oldest ring barrier not yet opened, or a new one."""
        oldest = (
            select(ring_barriers.c.epoch)
            .where(ring_barriers.c.opened_at.is_(None))
            .order_by(ring_barriers.c.created_at, ring_barriers.c.epoch)
            .limit(1)
        )
        with _driver_errors("starting a ring barrier"):
            async with self._writer.begin() as conn:
                epoch: str | None = await conn.scalar(oldest)
                if epoch is None:
                    epoch = uuid.uuid4().hex
                    await conn.execute(insert(ring_barriers).values(epoch=epoch, created_at=now))
        return epoch

    async def barrier_arrive(self, epoch: str, partition: int, now: datetime) -> None:
        """Record that ``partition`` reached the marker of ``epoch`` (idempotent)."""
        with _driver_errors("recording a ring barrier arrival"):
            async with self._writer.begin() as conn:
                statement = _upsert(conn, ring_arrivals).values(
                    epoch=epoch, partition=partition, arrived_at=now
                )
                await conn.execute(statement.on_conflict_do_nothing())

    async def barrier_arrivals(self, epoch: str) -> set[int]:
        """The partitions that reached the marker of ``epoch``."""
        query = select(ring_arrivals.c.partition).where(ring_arrivals.c.epoch == epoch)
        with _driver_errors("reading ring barrier arrivals"):
            async with self._engine.connect() as conn:
                return set((await conn.scalars(query)).all())

    async def barrier_opened(self, epoch: str) -> bool:
        """Whether ``epoch`` was opened; an epoch this store never saw counts as opened."""
        query = select(ring_barriers.c.opened_at).where(ring_barriers.c.epoch == epoch)
        with _driver_errors("reading a ring barrier"):
            async with self._engine.connect() as conn:
                row = (await conn.execute(query)).first()
        return row is None or row.opened_at is not None

    async def open_barrier(self, epoch: str, now: datetime) -> None:
        """Open ``epoch`` (idempotent)."""
        statement = (
            update(ring_barriers)
            .where(ring_barriers.c.epoch == epoch, ring_barriers.c.opened_at.is_(None))
            .values(opened_at=now)
        )
        with _driver_errors("opening a ring barrier"):
            async with self._writer.begin() as conn:
                await conn.execute(statement)

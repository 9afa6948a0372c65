"""BarrierStore contract: the SQL adapter (SQLite, PostgreSQL) and the in-memory one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from app.adapters.memory_store import InMemoryBarrierStore
from app.adapters.sql_barriers import SqlBarrierStore
from app.adapters.sql_schema import migrate
from app.ports import BarrierStore
from tests.contract.test_projection_store import T0

Store = BarrierStore


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def url(request: pytest.FixtureRequest) -> str | None:
    """None for the in-memory store, else a database URL (got here: its fixture is not async)."""
    if request.param == "memory":
        return None
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url"))


@pytest.fixture
async def store(url: str | None) -> AsyncIterator[BarrierStore]:
    if url is None:
        yield InMemoryBarrierStore()
        return
    await migrate(url)
    sql = SqlBarrierStore(url)
    try:
        yield sql
    finally:
        await sql.close()


class TestBarrierStore:
    async def test_a_ring_barrier_is_begun_reached_and_opened(self, store: Store) -> None:
        epoch = await store.begin_barrier(T0)
        assert len(epoch) == 32 and int(epoch, 16) >= 0
        assert await store.begin_barrier(T0) == epoch, "the unopened one, not a new one"
        assert not await store.barrier_opened(epoch)
        assert await store.barrier_arrivals(epoch) == set()
        await store.barrier_arrive(epoch, 2, T0)
        await store.barrier_arrive(epoch, 0, T0)
        await store.barrier_arrive(epoch, 2, T0)  # again: a marker delivered twice
        assert await store.barrier_arrivals(epoch) == {0, 2}
        await store.open_barrier(epoch, T0)
        await store.open_barrier(epoch, T0)
        assert await store.barrier_opened(epoch)
        later = await store.begin_barrier(T0 + timedelta(hours=1))
        assert later != epoch and not await store.barrier_opened(later)
        assert await store.barrier_arrivals(later) == set()

    async def test_an_unknown_barrier_counts_as_opened(self, store: Store) -> None:
        assert await store.barrier_opened("f" * 32)

    async def test_the_oldest_unopened_barrier_comes_first(self, store: Store) -> None:
        first = await store.begin_barrier(T0)
        await store.open_barrier(first, T0)
        second = await store.begin_barrier(T0 + timedelta(seconds=1))
        assert await store.begin_barrier(T0 + timedelta(seconds=2)) == second

"""Membership contract: the SQL adapter (SQLite, PostgreSQL) and the in-memory one.

Time is a ManualClock the test moves (the adapters take a clock of seconds), so "still within its
ttl" means "the clock stands 10 ms before its expiry", not "a real sleep ended in time on
whatever machine ran the test". The database's own clock, which production uses, is checked on
its own at the end.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine

from app.adapters.memory_store import InMemoryMembership
from app.adapters.sql_members import SqlMembership
from app.adapters.sql_models import trackers
from app.adapters.sql_schema import migrate
from app.ports import Membership
from tests.clock_fakes import ManualClock
from tests.contract.test_barrier_store import url  # noqa: F401 - the backend parameter

TTL = 5.0
JUST = 0.01
"""Seconds either side of an expiry (well above a float's rounding of an epoch time)."""


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def membership(url: str | None, clock: ManualClock) -> AsyncIterator[Membership]:  # noqa: F811
    if url is None:
        yield InMemoryMembership(clock.seconds)
        return
    await migrate(url)
    sql = SqlMembership(url, clock=clock.seconds)
    try:
        yield sql
    finally:
        await sql.close()


async def test_a_member_sees_itself_and_the_others_sorted(membership: Membership) -> None:
    assert await membership.beat("b", 30) == ["b"]
    assert await membership.beat("a", 30) == ["a", "b"]
    assert await membership.beat("c", 30) == ["a", "b", "c"]
    assert await membership.beat("b", 30) == ["a", "b", "c"], "a beat again adds nobody"


async def test_a_member_that_leaves_is_gone_at_once(membership: Membership) -> None:
    await membership.beat("a", 30)
    await membership.beat("b", 30)
    await membership.leave("a")
    await membership.leave("never-was")
    assert await membership.beat("b", 30) == ["b"]


async def test_a_member_that_stops_beating_is_gone_after_its_ttl(
    membership: Membership, clock: ManualClock
) -> None:
    await membership.beat("quiet", TTL)
    assert await membership.beat("busy", 30) == ["busy", "quiet"]
    await clock.advance(TTL - JUST)
    assert await membership.beat("busy", 30) == ["busy", "quiet"], "still within its ttl"
    await clock.advance(2 * JUST)
    assert await membership.beat("busy", 30) == ["busy"]


async def test_each_beat_extends_the_ttl(membership: Membership, clock: ManualClock) -> None:
    await membership.beat("steady", TTL)
    for _ in range(3):
        await clock.advance(TTL / 2)
        assert "steady" in await membership.beat("steady", TTL)
        assert "steady" in await membership.beat("observer", 30)
    await clock.advance(TTL - JUST)  # 3 beats after the first one's expiry: still live
    assert "steady" in await membership.beat("observer", 30)
    await clock.advance(2 * JUST)
    assert await membership.beat("observer", 30) == ["observer"], "gone a ttl after its last beat"


@pytest.fixture(params=["sqlite", "postgresql"])
def sql_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url"))


async def test_without_a_clock_the_database_dates_each_beat(sql_url: str) -> None:
    """Production passes no clock: expiries are the database's time plus the ttl."""
    await migrate(sql_url)
    membership = SqlMembership(sql_url)
    before = time.time()
    try:
        assert await membership.beat("alive", 3600) == ["alive"]
        assert await membership.beat("expired", -1) == ["alive"], "past its ttl in its own beat"
    finally:
        await membership.close()
    after = time.time()
    engine = create_async_engine(sql_url)
    try:
        async with engine.connect() as conn:
            expires = (await conn.execute(select(trackers.c.expires))).scalar_one()
    finally:
        await engine.dispose()
    # The database runs on this machine: its clock is this one's, give or take a minute.
    assert before - 60 < expires - 3600 < after + 60

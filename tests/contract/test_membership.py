"""Membership contract: the SQL adapter (SQLite, PostgreSQL) and the in-memory one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from app.adapters.memory_store import InMemoryMembership
from app.adapters.sql_members import SqlMembership
from app.adapters.sql_schema import migrate
from app.ports import Membership
from tests.contract.test_barrier_store import url  # noqa: F401 - the backend parameter

TTL = 0.6


@pytest.fixture
async def membership(url: str | None) -> AsyncIterator[Membership]:  # noqa: F811
    if url is None:
        yield InMemoryMembership()
        return
    await migrate(url)
    sql = SqlMembership(url)
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


async def test_a_member_that_stops_beating_is_gone_after_its_ttl(membership: Membership) -> None:
    await membership.beat("quiet", TTL)
    assert await membership.beat("busy", 30) == ["busy", "quiet"]
    await asyncio.sleep(TTL / 3)
    assert await membership.beat("busy", 30) == ["busy", "quiet"], "still within its ttl"
    await asyncio.sleep(TTL)
    assert await membership.beat("busy", 30) == ["busy"]


async def test_each_beat_extends_the_ttl(membership: Membership) -> None:
    await membership.beat("steady", TTL)
    for _ in range(3):
        await asyncio.sleep(TTL / 2)
        assert "steady" in await membership.beat("steady", TTL)
        assert "steady" in await membership.beat("observer", 30)

"""The fleet read in bounded pages: pages add up to the whole fleet, cursors only resume their own
query, and the scan hands the event loop back as it goes (app/services/fleet.py, GET /fleet)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from app.adapters.memory_log import InMemoryEventLog
from app.adapters.memory_queries import InMemoryJobQueries
from app.adapters.memory_store import InMemoryProjectionStore
from app.adapters.sql_log import SqlEventLog
from app.bootstrap import Readers
from app.domain.events import JobEvent
from app.entrypoints.api import create_api
from app.entrypoints.api_auth import Tokens
from app.ports import EventLog
from app.services.fleet import (
    YIELD_EVERY,
    FleetKey,
    decode_fleet_cursor,
    encode_fleet_cursor,
    fleet_as_of,
    fleet_page,
)
from app.services.queries import InvalidCursor
from app.settings import Settings
from tests.unit.factories import T0, completed, failed, heartbeat, reserved, small_policy, submitted

POLICY = small_policy()
AT = T0 + timedelta(hours=2)


def _job(n: int) -> list[JobEvent]:
    """Job ``n``: 1 to 4 events, in one of three pools, a few recorded after AT."""
    job_id, at = f"job-{n:04d}", T0 + timedelta(seconds=n)
    events: list[JobEvent] = [submitted(job_id, at=at, pool=f"pool-{n % 3}", tenant="acme")]
    if n % 4 >= 1:
        events.append(reserved(job_id, at=at))
    if n % 4 >= 2:
        events.append(heartbeat(job_id, at=at))
    if n % 4 == 3:
        events.append(completed(job_id, at=at) if n % 8 == 3 else failed(job_id, at=at))
    return events


async def _filled(log: EventLog, jobs: int) -> EventLog:
    await log.ensure_schema()
    early = [event for n in range(jobs) for event in _job(n) if n % 10]
    late = [event for n in range(jobs) for event in _job(n) if not n % 10]
    await log.append_many(early, T0 + timedelta(hours=1))
    await log.append_many(late, AT + timedelta(seconds=1))  # jobs unknown as of AT
    return log


@pytest.fixture(params=["memory", "sqlite"])
async def log(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[EventLog]:
    if request.param == "memory":
        chosen: EventLog = InMemoryEventLog(page_size=7)
    else:
        chosen = SqlEventLog(f"sqlite+aiosqlite:///{tmp_path / 'log.db'}", page_size=7)
    yield await _filled(chosen, 200)
    await chosen.close()


@pytest.mark.parametrize("max_events", [1, 10, 57, 1000])
async def test_pages_partition_the_fleet(log: EventLog, max_events: int) -> None:
    whole = await fleet_as_of(log, POLICY, AT, by=FleetKey.POOL, with_ids=True)
    counts: Counter[tuple[str | None, str | None]] = Counter()
    ids: list[str] = []
    after, events, pages = None, 0, 0
    while True:
        page = await fleet_page(
            log, POLICY, AT, by=FleetKey.POOL, with_ids=True, after=after, max_events=max_events
        )
        pages += 1
        assert page.events <= max_events + 4  # the bound, overshot by one job's history at most
        events += page.events
        for group in page.groups:
            counts[(group.key, group.status)] += group.count
            ids += group.job_ids
        if page.last_job is None:
            break
        after = page.last_job
    assert counts == Counter({(g.key, g.status): g.count for g in whole})
    assert sorted(ids) == sorted(job for g in whole for job in g.job_ids)
    assert len(ids) == 180 and len(set(ids)) == 180  # 20 jobs have no event by AT
    total = await log.count()
    assert events == total
    assert pages == 1 if max_events >= total else pages >= total // (max_events + 4)


async def test_a_status_filter_pages_the_same_way(log: EventLog) -> None:
    whole = await fleet_as_of(log, POLICY, AT, status="reserved")
    total, after = 0, None
    while True:
        page = await fleet_page(log, POLICY, AT, status="reserved", after=after, max_events=20)
        total += sum(group.count for group in page.groups)
        if page.last_job is None:
            break
        after = page.last_job
    assert total == sum(group.count for group in whole) > 0


async def test_the_scan_hands_the_event_loop_back_every_few_entries() -> None:
    # The in-memory log never awaits: without the scan's own yields the loop would not turn once.
    log = await _filled(InMemoryEventLog(), 2000)
    turns = 0

    async def count_turns() -> None:
        nonlocal turns
        while True:
            await asyncio.sleep(0)
            turns += 1

    counter = asyncio.create_task(count_turns())
    await asyncio.sleep(0)
    await fleet_as_of(log, POLICY, AT)
    counter.cancel()
    assert turns >= await log.count() // YIELD_EVERY


def test_a_cursor_resumes_only_its_own_question() -> None:
    cursor = encode_fleet_cursor("job-0042", AT, "reserved", FleetKey.POOL, True)
    assert decode_fleet_cursor(cursor, AT, "reserved", FleetKey.POOL, True) == "job-0042"
    assert len(encode_fleet_cursor("j" * 200, AT, "cooling_down", FleetKey.TENANT, True)) < 600
    others = [
        (AT + timedelta(seconds=1), "reserved", FleetKey.POOL, True),
        (AT, None, FleetKey.POOL, True),
        (AT, "reserved", FleetKey.MODEL, True),
        (AT, "reserved", None, True),
        (AT, "reserved", FleetKey.POOL, False),
    ]
    for at, status, by, ids in others:
        with pytest.raises(InvalidCursor, match="another fleet query"):
            decode_fleet_cursor(cursor, at, status, by, ids)
    forged = encode_fleet_cursor("job\x00'", AT, None, None, False)  # not a job id
    for bogus in ["", "x" * 601, "!!!", "bm90IGpzb24", "WzEsMl0", forged]:
        with pytest.raises(InvalidCursor):
            decode_fleet_cursor(bogus, AT, None, None, False)


async def test_the_api_serves_the_fleet_in_bounded_pages(tmp_path: Path) -> None:
    settings = Settings(
        log_url=f"sqlite+aiosqlite:///{tmp_path / 'log.db'}",
        sql_url=f"sqlite+aiosqlite:///{tmp_path / 'jobtrail.db'}",
        fleet_page_events=1000,
    )
    log = await _filled(SqlEventLog(settings.log_url), 1000)
    store = InMemoryProjectionStore()
    readers = Readers(log, store, POLICY)
    api = create_api(settings, readers, tokens=Tokens(), queries=InMemoryJobQueries(store))
    params = {"at": AT.isoformat(), "by": "pool", "ids": "true"}
    ids: list[str] = []
    bodies = []
    transport = httpx.ASGITransport(app=api)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        while True:
            body = (await client.get("/fleet", params=params)).json()
            bodies.append(body)
            ids += [job for group in body["groups"] for job in group["job_ids"]]
            assert body["scanned"]["events"] <= 1000 + 4
            if body["next_cursor"] is None:
                break
            params["cursor"] = body["next_cursor"]
        assert [b["complete"] for b in bodies] == [False] * (len(bodies) - 1) + [True]
        assert len(bodies) >= 2 and sorted(ids) == sorted(set(ids)) and len(ids) == 900
        assert sum(b["scanned"]["events"] for b in bodies) == await log.count()
        cursor = bodies[0]["next_cursor"]
        other = await client.get("/fleet", params={"at": AT.isoformat(), "cursor": cursor})
        assert other.status_code == 422
        assert "another fleet query" in other.json()["error"]
        assert (
            await client.get("/fleet", params=params | {"cursor": "x" * 601})
        ).status_code == 422
    await log.close()

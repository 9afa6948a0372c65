"""The database-side proof of a rebuild (``same_rows``): EXCEPT both ways, compared columns only."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest
from sqlalchemy import update

from app.adapters.sql_models import timers
from app.adapters.sql_rebuild import SqlRebuildTables
from app.adapters.sql_schema import make_engine, migrate
from app.adapters.sql_store import SqlProjectionStore
from app.ports import ProjectionUpdate
from tests.contract.test_projection_store import T0, attempt, full_update, job, timer

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(f"{'sqlite' if request.param == 'sqlite' else 'pg'}_url"))


LIVE = [full_update(f"job-{n}") for n in range(5)] + [
    ProjectionUpdate(job=job("job-9", last_seq=3), timer=timer("job-9", T0))
]


async def _rig(url: str, fresh: list[ProjectionUpdate]) -> SqlRebuildTables:
    await migrate(url)
    store = SqlProjectionStore(url)
    try:
        await store.apply(LIVE)
    finally:
        await store.close()
    target = SqlRebuildTables(url)
    await target.prepare()
    await target.write(fresh)
    return target


async def test_the_same_rows_are_the_same(url: str) -> None:
    target = await _rig(url, LIVE)
    try:
        assert await target.same_rows()
    finally:
        await target.discard()
        await target.close()


async def test_a_timer_claim_is_not_a_difference(url: str) -> None:
    target = await _rig(url, LIVE)
    engine = make_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(update(timers).values(claimed_until=T0 + timedelta(seconds=5)))
        assert await target.same_rows()
    finally:
        await engine.dispose()
        await target.discard()
        await target.close()


@pytest.mark.parametrize(
    "fresh",
    [
        LIVE[:-1],  # a job missing
        [*LIVE, full_update("job-extra")],  # a job too many
        [replace(LIVE[0], job=replace(LIVE[0].job, status="failed")), *LIVE[1:]],
        [replace(LIVE[0], attempts=[*LIVE[0].attempts, attempt("job-0", 9)]), *LIVE[1:]],
        [*LIVE[:-1], replace(LIVE[-1], timer=timer("job-9", T0 + timedelta(seconds=1)))],
        [*LIVE[:-1], replace(LIVE[-1], timer=None)],
    ],
    ids=["missing-job", "extra-job", "job-field", "extra-attempt", "timer-due", "no-timer"],
)
async def test_any_difference_is_found(url: str, fresh: list[ProjectionUpdate]) -> None:
    target = await _rig(url, fresh)
    try:
        assert not await target.same_rows()
    finally:
        await target.discard()
        await target.close()

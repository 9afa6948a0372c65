"""A fleet query over a big log, served by a running tracker, leaves its ingestion on time.

``jobtrail serve`` runs the API in the tracker's event loop: the loop that acknowledges
deliveries and renews the tracker's membership (else its partitions move to other trackers).
Here a real tracker (RabbitMQ, SQLite log and projections, its API on a socket) serves
``GET /fleet?ids=true`` over a log of 100,000 events, page after page, while a ticker measures the
loop's lag, the membership heartbeats are timed, and a delivery published meanwhile must be
recorded and acknowledged before the walk ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import pytest

from app.adapters import rabbit
from app.adapters.log_factory import open_event_log
from app.adapters.rabbit_acks import BatchAcks
from app.bootstrap import Tracking, build_tracking, prepare_storage
from app.bootstrap.hosting import listen
from app.bootstrap.metrics import Metrics
from app.bootstrap.worker import create_app
from app.domain.events import JobEvent
from app.entrypoints.api_auth import Tokens
from app.entrypoints.api_server import serve_api
from app.settings import Settings
from tests.unit.factories import T0, completed, heartbeat, reserved, submitted

JOBS = 25_000
EVENTS_PER_JOB = 4
EVENTS = JOBS * EVENTS_PER_JOB  # the issue asks for >= 100,000
FILL_BATCH = 5_000
MEMBER_TTL_SECONDS = 5.0  # the default (JOBTRAIL_MEMBER_TTL_S): what a user's tracker keeps
LAG_BOUND_SECONDS = 1.0  # generous: a page of the scan holds the loop for milliseconds
AT = T0 + timedelta(days=1)


async def _fill(log_url: str) -> None:
    """Append EVENTS straight through the EventLog port, in batches (seconds, not minutes)."""
    log = open_event_log(log_url)
    batch: list[JobEvent] = []
    try:
        for n in range(JOBS):
            job_id, at = f"job-{n:06d}", T0 + timedelta(seconds=n % 3600)
            batch += [
                submitted(job_id, at=at, pool=f"pool-{n % 3}", tenant="acme"),
                reserved(job_id, at=at),
                heartbeat(job_id, at=at),
                completed(job_id, at=at),
            ]
            if len(batch) >= FILL_BATCH:
                await log.append_many(batch, T0 + timedelta(hours=1))
                batch = []
        await log.append_many(batch, T0 + timedelta(hours=1))
        assert await log.count() == EVENTS
    finally:
        await log.close()


class LoopLag:
    """The longest an ``asyncio.sleep(0.05)`` overslept while measuring."""

    def __init__(self) -> None:
        self.worst = 0.0
        self.measuring = False

    async def run(self) -> None:
        while True:
            started = time.monotonic()
            await asyncio.sleep(0.05)
            if self.measuring:
                self.worst = max(self.worst, time.monotonic() - started - 0.05)


def _spy_on_acks(monkeypatch: pytest.MonkeyPatch) -> dict[str, float]:
    """Job id -> when its delivery's acknowledgement was written (or, when a delivery before it
    was still in flight, when it was handed to the multiple-ack that will cover it)."""
    acked: dict[str, float] = {}
    real_finish = BatchAcks.finish

    def finish(self: BatchAcks, message: Any, *, ack: bool) -> asyncio.Future[None] | None:
        waiting = real_finish(self, message, ack=ack)
        if ack and message.body:  # ring markers are empty
            job_id = json.loads(message.body)["job_id"]
            if waiting is None:
                acked[job_id] = time.monotonic()
            else:
                waiting.add_done_callback(lambda _: acked.__setitem__(job_id, time.monotonic()))
        return waiting

    monkeypatch.setattr(BatchAcks, "finish", finish)
    return acked


def _spy_on_beats(monkeypatch: pytest.MonkeyPatch, tracking: Tracking) -> list[float]:
    """When each membership heartbeat was written."""
    beats: list[float] = []
    real_beat = tracking.membership.beat

    async def beat(member: str, ttl: float) -> list[str]:
        live = await real_beat(member, ttl)
        beats.append(time.monotonic())
        return live

    monkeypatch.setattr(tracking.membership, "beat", beat)
    return beats


@contextlib.asynccontextmanager
async def _serving(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Any]:
    """A tracker as ``jobtrail serve`` runs it: subscribers and the API in this event loop."""
    sock = listen("127.0.0.1", 0)
    tracking = build_tracking(settings)
    beats = _spy_on_beats(monkeypatch, tracking)
    await tracking.start()
    stream = create_app(tracking)
    stop = asyncio.Event()
    await stream.start()
    gc.freeze()  # as jobtrail serve does once started (app/entrypoints/cli.py)
    api = asyncio.create_task(
        serve_api(
            settings, tracking.readers, tracking.health, Metrics(), stop, tokens=Tokens(), sock=sock
        )
    )
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", tracking, beats
    finally:
        stop.set()
        await stream.stop()
        await tracking.stop()
        await asyncio.wait_for(api, 60)
        gc.unfreeze()


@contextlib.asynccontextmanager
async def _cancelling(task: asyncio.Task[None]) -> AsyncIterator[None]:
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _publish(url: str, event: JobEvent) -> None:
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(rabbit.EVENTS_EXCHANGE)
        message = aio_pika.Message(
            event.model_dump_json().encode(),
            headers={rabbit.JOB_ID_HEADER: event.job_id},
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        await exchange.publish(message, routing_key=f"job.{event.type}")
    finally:
        await connection.close()


async def _under_way(walk: asyncio.Task[dict[str, Any]], first_page: asyncio.Event) -> None:
    """Wait (up to 60 s) until the walk has its first page; the walk's error if it fails first."""
    page = asyncio.ensure_future(first_page.wait())
    done, _ = await asyncio.wait({walk, page}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
    page.cancel()
    if walk in done:
        walk.result()  # raises what failed the walk, if anything did
    assert first_page.is_set(), "timed out waiting for the fleet query's first page"


async def _acked(acked: dict[str, float], job_id: str) -> float:
    async with asyncio.timeout(60):
        while job_id not in acked:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    return acked[job_id]


async def _walk_fleet(base_url: str, first_page: asyncio.Event) -> dict[str, Any]:
    """Every page of ``/fleet?ids=true`` (one request if the server does not page);
    ``first_page`` is set once the first page is in."""
    params = {"at": AT.isoformat(), "by": "pool", "ids": "true"}
    ids: list[str] = []
    pages = scanned = 0
    async with httpx.AsyncClient(base_url=base_url, timeout=600) as client:
        while True:
            response = await client.get("/fleet", params=params)
            assert response.status_code == 200, response.text
            body = response.json()
            pages += 1
            first_page.set()
            scanned += body.get("scanned", {}).get("events", 0)
            ids += [job for group in body["groups"] for job in group["job_ids"]]
            if body.get("next_cursor") is None:
                return {"pages": pages, "ids": ids, "scanned": scanned}
            params["cursor"] = body["next_cursor"]


async def test_a_fleet_query_over_100k_events_keeps_acks_and_heartbeats_on_time(
    rabbit_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(
        rabbit_url=rabbit_url,
        log_url=f"sqlite+aiosqlite:///{tmp_path / 'log.db'}",
        sql_url=f"sqlite+aiosqlite:///{tmp_path / 'jobtrail.db'}",
        partitions=1,
        member_ttl_s=MEMBER_TTL_SECONDS,
        batch_wait_ms=5,
    )
    await prepare_storage(settings)
    await _fill(settings.log_url)
    acked = _spy_on_acks(monkeypatch)
    lag = LoopLag()
    ticker = asyncio.create_task(lag.run())
    async with _serving(settings, monkeypatch) as (url, tracking, beats), _cancelling(ticker):
        # Ids sorted before every filled job: a page already walked, and recorded after AT.
        await _publish(rabbit_url, submitted("aa-warm-up", at=T0))
        await _acked(acked, "aa-warm-up")  # the tracker consumes its partition
        lag.measuring = True
        started = time.monotonic()
        first_page = asyncio.Event()
        walk = asyncio.create_task(_walk_fleet(url, first_page))
        await _under_way(walk, first_page)
        await _publish(rabbit_url, submitted("aa-during-the-query", at=T0))
        acked_at = await _acked(acked, "aa-during-the-query")
        assert not walk.done(), "the fleet query ended before the delivery: nothing was shown"
        fleet = await walk
        ended = time.monotonic()
        lag.measuring = False
        recorded = await tracking.readers.log.read_job("aa-during-the-query")
    # On time: the loop turned, the membership row stayed fresh, the delivery was acknowledged.
    assert lag.worst < LAG_BOUND_SECONDS, f"the event loop stalled {lag.worst:.2f} s"
    during = [beat for beat in beats if beat > started]
    gaps = [b - a for a, b in zip([started, *during], [*during, ended], strict=True)]
    assert max(gaps) < MEMBER_TTL_SECONDS, f"membership heartbeats {max(gaps):.2f} s apart"
    assert started < acked_at < ended and len(recorded) == 1
    # The query answered in full, in bounded pages.
    assert sorted(fleet["ids"]) == [f"job-{n:06d}" for n in range(JOBS)]
    assert fleet["scanned"] >= EVENTS and fleet["pages"] >= 2

"""``jobtrail demo``: the real tracker (as ``serve`` runs it) with a simulated Cloud and fleet.

Bounded: it listens on loopback only, stops by itself after ``duration`` seconds (or when
``stop`` is set, e.g. on Ctrl-C), and refuses to run on a virtual host where a tracker already
consumes (its jobs would be mixed with real ones).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractRobustConnection

from app.bootstrap import build_tracking, open_queries, prepare_storage
from app.bootstrap.hosting import ApiServer, listen
from app.bootstrap.metrics import Metrics
from app.demo.fleet import Cloud, Node, Tally, start_fleet, stop_fleet
from app.demo.scenario import DemoConfig, demo_policy, fleet
from app.domain.state import TERMINAL, JobStatus
from app.ports import JobFilter, JobRow, PublishFailed
from app.ports.topology import partition_queue
from app.services.queries import list_jobs
from app.settings import Settings

PROGRESS_SECONDS = 5.0
DRAIN_SECONDS = 10.0
LOOPBACK = "127.0.0.1"
Say = Callable[[str], None]


@dataclass
class Summary:
    """What the run did, for people (``lines``) and for scripts (``as_json``)."""

    run_id: str
    seconds: float
    submitted: int
    completed: int
    retried: int
    rerouted: int
    dead_lettered: int
    expired_leases: int
    expired_ttl: int
    anomalies: int
    still_open: int
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)
    examples: dict[str, str] = field(default_factory=dict)
    dashboard: str = ""

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def lines(self) -> list[str]:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(self.dead_letter_reasons.items()))
        rows = [
            f"demo {self.run_id} ran {self.seconds:.0f}s",
            f"  jobs submitted      {self.submitted}",
            f"  completed           {self.completed}",
            f"  retried             {self.retried}",
            f"  rerouted            {self.rerouted}",
            f"  dead-lettered       {self.dead_lettered}" + (f" ({reasons})" if reasons else ""),
            f"  lease expiries      {self.expired_leases}",
            f"  expired (TTL)       {self.expired_ttl}",
            f"  with anomalies      {self.anomalies}",
            f"  still open          {self.still_open}",
        ]
        rows += [f"  see: jobtrail history {job}   # {kind}" for kind, job in self.examples.items()]
        return rows


async def run_demo(
    settings: Settings,
    config: DemoConfig,
    stop: asyncio.Event,
    say: Say,
    port: int | None = None,
    *,
    serve: ApiServer,
) -> Summary:
    """Run the tracker, the API (served by ``serve``) and the simulation until ``duration``
    passes or ``stop`` is set."""
    run_id = uuid.uuid4().hex[:6]
    with tempfile.TemporaryDirectory(prefix="jobtrail-demo-") as workdir:
        policy = Path(workdir) / "demo-policy.toml"
        policy.write_text(demo_policy(config), encoding="utf-8")
        http_port = settings.http_port if port is None else port
        settings = settings.model_copy(
            update={"policy_file": policy, "http_host": LOOPBACK, "http_port": http_port}
        )
        connection = await _connect(settings.rabbit_url)
        try:
            await _refuse_busy_vhost(connection)
            tally = Tally(prefix=f"demo-{run_id}-")
            async with running_tracker(settings, tally, serve) as url:
                say(f"dashboard: {url}/dashboard")
                say(
                    f"a simulated Cloud and {config.nodes} nodes are driving the tracker; "
                    f"the demo stops after {config.duration:.0f}s (or Ctrl-C)"
                )
                started = datetime.now(UTC)
                clock = time.monotonic()
                await _simulate(settings, config, connection, tally, stop, say, run_id)
                await _drain(connection, settings.partitions)
                summary = await _summarize(settings, tally, run_id, started)
                summary.seconds = time.monotonic() - clock
                summary.dashboard = f"{url}/dashboard"
                return summary
        finally:
            await connection.close()


async def _connect(url: str) -> AbstractRobustConnection:
    try:
        return await aio_pika.connect_robust(url, timeout=10)
    except (aio_pika.exceptions.AMQPError, aiormq.exceptions.AMQPError, OSError) as exc:
        raise PublishFailed(f"cannot reach RabbitMQ: {exc!r}") from exc


async def _refuse_busy_vhost(connection: AbstractRobustConnection) -> None:
    channel = await connection.channel()
    try:
        queue = await channel.declare_queue(partition_queue(0), passive=True)
    except aiormq.exceptions.ChannelNotFoundEntity:
        return  # no tracker ever ran here
    consumers = queue.declaration_result.consumer_count or 0
    await channel.close()
    if consumers:
        raise ValueError(
            "a tracker already consumes on this RabbitMQ virtual host: run the demo on a "
            "vhost of its own (JOBTRAIL_RABBIT_URL=amqp://.../demo)"
        )


@asynccontextmanager
async def running_tracker(settings: Settings, tally: Tally, serve: ApiServer) -> AsyncIterator[str]:
    """The tracker, its subscribers and the API, as ``jobtrail serve`` runs them; yields the
    API's base URL."""
    from app.bootstrap.worker import create_app  # FastStream: loaded when a demo runs

    sock = listen(settings.http_host, settings.http_port)
    stop = asyncio.Event()
    try:
        await prepare_storage(settings)
        tracking = build_tracking(settings)
    except BaseException:
        sock.close()
        raise
    metrics = Metrics()
    metrics.watch(tracking)
    tally.watch(tracking.tracker)
    host, port = sock.getsockname()[:2]
    await tracking.start()
    stream = create_app(tracking)
    api: asyncio.Task[None] | None = None
    try:
        await stream.start()
        api = asyncio.create_task(
            serve(settings, tracking.readers, tracking.health, metrics, stop, sock=sock)
        )
        yield f"http://{host}:{port}"
    finally:
        stop.set()
        await stream.stop()
        await tracking.stop()
        if api is None:
            sock.close()
        else:
            await api


async def _simulate(
    settings: Settings,
    config: DemoConfig,
    connection: AbstractRobustConnection,
    tally: Tally,
    stop: asyncio.Event,
    say: Say,
    run_id: str,
) -> None:
    url = settings.rabbit_url

    def make(spec: Any, index: int) -> Node:
        return Node(spec, url, config, tally, seed=config.seed * 1000 + index)

    nodes = await start_fleet(connection, fleet(config), make)
    cloud = Cloud(url, run_id, config, tally, random.Random(config.seed))
    submitting = asyncio.create_task(cloud.run(stop), name="jobtrail-demo-cloud")
    reporting = asyncio.create_task(_progress(tally, stop, say), name="jobtrail-demo-progress")
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(_until_stopped(stop, submitting), config.duration)
    finally:
        stop.set()
        await asyncio.gather(submitting, reporting, return_exceptions=True)
        await stop_fleet(nodes)
    submitting.result()  # re-raise what stopped the Cloud early, if anything did


async def _until_stopped(stop: asyncio.Event, submitting: asyncio.Task[None]) -> None:
    """Wait for ``stop``; a Cloud that fails (broker gone) ends the run early."""
    waiter = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({waiter, submitting}, return_when=asyncio.FIRST_COMPLETED)
        if submitting.done() and submitting.exception() is None:
            await waiter  # the Cloud is done submitting; the fleet keeps working
    finally:
        waiter.cancel()


async def _progress(tally: Tally, stop: asyncio.Event, say: Say) -> None:
    started = time.monotonic()
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), PROGRESS_SECONDS)
        if stop.is_set():
            return
        say(
            f"{time.monotonic() - started:5.0f}s  submitted {tally.submitted}  "
            f"completed {len(tally.completed)}  retried {len(tally.jobs('retried'))}  "
            f"rerouted {len(tally.jobs('rerouted'))}  "
            f"dead-lettered {len(tally.jobs('dead_lettered'))}"
        )


async def _drain(connection: AbstractRobustConnection, partitions: int) -> None:
    """Give the tracker a moment to record what the fleet sent last (bounded)."""
    channel = await connection.channel()
    deadline = time.monotonic() + DRAIN_SECONDS
    try:
        while time.monotonic() < deadline:
            waiting = 0
            for index in range(partitions):
                queue = await channel.declare_queue(partition_queue(index), passive=True)
                waiting += queue.declaration_result.message_count or 0
            if waiting == 0:
                await asyncio.sleep(0.5)  # the last batch commits
                return
            await asyncio.sleep(0.2)
    finally:
        await channel.close()


async def _summarize(settings: Settings, tally: Tally, run_id: str, since: datetime) -> Summary:
    rows = await _rows_since(settings, since, tally.prefix)
    statuses = Counter(row.status for row in rows)
    reasons = Counter(
        str(row.terminal_reason) for row in rows if row.status == JobStatus.DEAD_LETTERED
    )
    open_jobs = sum(1 for row in rows if row.status is None or row.status not in TERMINAL)
    return Summary(
        run_id=run_id,
        seconds=0.0,
        submitted=tally.submitted,
        completed=statuses[JobStatus.COMPLETED],
        retried=len(tally.jobs("retried")),
        rerouted=len(tally.jobs("rerouted")),
        dead_lettered=statuses[JobStatus.DEAD_LETTERED],
        expired_leases=len(tally.jobs("expired:lease")),
        expired_ttl=statuses[JobStatus.EXPIRED],
        anomalies=sum(1 for row in rows if row.anomalies > 0),
        still_open=open_jobs,
        dead_letter_reasons=dict(reasons),
        examples=_examples(tally, rows),
    )


def _examples(tally: Tally, rows: list[JobRow]) -> dict[str, str]:
    """A job to look at for each thing that happened, preferring the showcase job made for it."""
    found = {
        "retried": ("retry", tally.jobs("retried")),
        "rerouted": ("reroute", tally.jobs("rerouted")),
        "lease expired": ("lease", tally.jobs("expired:lease")),
        "dead-lettered": (
            "dead-letter",
            {r.job_id for r in rows if r.status == JobStatus.DEAD_LETTERED},
        ),
        "anomalies": ("lease", {r.job_id for r in rows if r.anomalies > 0}),
    }
    examples = {}
    for kind, (showcase, jobs) in found.items():
        preferred = tally.showcase.get(showcase)
        if jobs:
            examples[kind] = preferred if preferred in jobs else min(jobs)
    return examples


async def _rows_since(settings: Settings, since: datetime, prefix: str) -> list[JobRow]:
    queries = open_queries(settings)
    rows: list[JobRow] = []
    cursor: str | None = None
    try:
        while True:
            page = await list_jobs(
                queries, JobFilter(updated_since=since), limit=500, cursor=cursor
            )
            rows.extend(row for row in page.items if row.job_id.startswith(prefix))
            if page.next_cursor is None:
                return rows
            cursor = page.next_cursor
    finally:
        await queries.close()

"""Scenarios that need no broker: rebuild against an in-memory fold, API read latency, timer lag."""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import aio_pika
import httpx

from app.adapters.log_factory import open_event_log
from app.adapters.sql_rebuild import SqlRebuildTables
from app.adapters.sql_store import SqlProjectionStore
from app.bench.workload import lifecycle_events
from app.bootstrap import Readers, prepare_storage
from app.bootstrap.hosting import ApiServer, listen
from app.bootstrap.metrics import Metrics
from app.domain.chain import RecordedEvent
from app.domain.decide import next_deadline
from app.domain.events import JobEvent, Reserved, Submitted, parse_event
from app.domain.machine import fold
from app.domain.policy import Policy
from app.ports import EventLog
from app.services.rebuild import rebuild
from app.services.tracking import Tracker
from app.settings import Settings

APPEND_CHUNK = 1000


async def fill_log(log: EventLog, events: Sequence[JobEvent]) -> None:
    """Store the events as the tracker would, a chunk per transaction."""
    at = datetime.now(UTC)
    for start in range(0, len(events), APPEND_CHUNK):
        await log.append_many(events[start : start + APPEND_CHUNK], at)


async def in_memory_fold_rate(log: EventLog) -> float:
    """Events/s of decoding the stored JSON and folding each job, all in memory (the baseline)."""
    stored = [
        (entry.job_id, entry.seq, entry.recorded_at, entry.data) async for entry in log.scan_raw()
    ]
    started = time.perf_counter()
    current: str | None = None
    history: list[RecordedEvent] = []
    for job_id, seq, recorded_at, data in stored:
        if job_id != current and history:
            fold(history)
            history = []
        current = job_id
        history.append(RecordedEvent(seq, recorded_at, "", "", parse_event(data)))
    if history:
        fold(history)
    return len(stored) / (time.perf_counter() - started)


async def rebuild_rate(settings: Settings, policy: Policy, events: int) -> float:
    """Events/s of ``rebuild`` (replay into fresh tables, then the row-by-row proof)."""
    log = open_event_log(settings.log_url)
    target = SqlRebuildTables(settings.sql_url)
    try:
        await rebuild(log, target, policy, force=True)  # the live tables, to compare against
        started = time.perf_counter()
        report = await rebuild(log, target, policy, dry_run=True)
        elapsed = time.perf_counter() - started
        if not report.equal:
            raise RuntimeError("the rebuilt projection differs from the live one")
        return events / elapsed
    finally:
        await target.close()
        await log.close()


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def pad_jobs(settings: Settings, total: int) -> None:
    """Add synthetic job rows until the projection holds ``total`` jobs (then ANALYZE)."""
    from sqlalchemy import func, insert, select, text

    from app.adapters.sql_models import jobs
    from app.adapters.sql_schema import make_engine

    engine = make_engine(settings.sql_url)
    try:
        async with engine.connect() as conn:
            have = int(await conn.scalar(select(func.count()).select_from(jobs)) or 0)
        now = datetime.now(UTC)
        statuses = ("completed", "failed", "queued", "reserved", "dead_lettered", "cancelled")
        for start in range(have, total, PAD_CHUNK):
            rows = [
                {
                    "job_id": f"pad-{n:09d}",
                    "status": statuses[n % len(statuses)],
                    "attempt": 1 + n % 3,
                    "max_attempts": 3,
                    "job_type": ("sync", "batch", "polling", "stream")[n % 4],
                    "model": f"model-{n % 20}",
                    "priority": ("urgent", "bulk", "test")[n % 3],
                    "tenant": f"tenant-{n % 100}",
                    "pool": ("gpu-a", "gpu-b", "cpu")[n % 3],
                    "queue": "jobtrail.work.gpu-a.batch",
                    "node_id": f"n{n % 50}",
                    "anomalies": 0,
                    "last_seq": 3,
                    "submitted_at": now - timedelta(seconds=n),
                    "updated_at": now - timedelta(seconds=n),
                }
                for n in range(start, min(start + PAD_CHUNK, total))
            ]
            async with engine.begin() as conn:
                await conn.execute(insert(jobs), rows)
        if engine.dialect.name == "postgresql":
            async with engine.begin() as conn:
                await conn.execute(text("ANALYZE jobs"))
    finally:
        await engine.dispose()


PAD_CHUNK = 5000


async def read_latencies(
    settings: Settings, policy: Policy, requests: int, serve: ApiServer
) -> dict[str, float]:
    """p50/p99 (ms) of GET /jobs/{id} and of a filtered list page, over real HTTP on loopback,
    from the API ``serve`` runs in this event loop (without tokens)."""
    store = SqlProjectionStore(settings.sql_url)
    job_ids = [row.job_id async for row in store.all_jobs()]
    await store.close()
    readers = Readers(
        open_event_log(settings.log_url), SqlProjectionStore(settings.sql_url), policy
    )
    stop = asyncio.Event()
    sock = listen("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = asyncio.create_task(serve(settings, readers, None, Metrics(), stop, sock=sock))
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            await _wait_until_up(client)
            one = [await _timed(client, f"/jobs/{random.choice(job_ids)}") for _ in range(requests)]
            pages = [
                await _timed(client, "/jobs?status=completed&pool=gpu-a&limit=50")
                for _ in range(max(requests // 4, 10))
            ]
    finally:
        stop.set()
        await server
        await readers.close()
    return {
        "get_p50": percentile(one, 0.5),
        "get_p99": percentile(one, 0.99),
        "list_p50": percentile(pages, 0.5),
        "list_p99": percentile(pages, 0.99),
        "jobs": float(len(job_ids)),
    }


async def _wait_until_up(client: httpx.AsyncClient) -> None:
    for _ in range(100):
        try:
            if (await client.get("/healthz")).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.05)
    raise TimeoutError("the API did not come up")


async def _timed(client: httpx.AsyncClient, path: str) -> float:
    started = time.perf_counter()
    answer = await client.get(path)
    if answer.status_code != 200:
        raise RuntimeError(f"GET {path} answered {answer.status_code}")
    return (time.perf_counter() - started) * 1000


async def timer_lag(
    settings: Settings, policy: Policy, jobs: int, lease: float = 3.0
) -> dict[str, float]:
    """Timer lateness with ``jobs`` live jobs: lease expiries, and retries reaching RabbitMQ.

    All but ``PROBES`` of them hold an hour-long lease (they stay live: the timers table is full);
    the probes, recorded last, hold a ``lease``-second one. Timed: each probe's expiry against
    its lease deadline, and its retry's job message arriving on the work queue (published by
    the outbox relay through ``settings.rabbit_url``) against the end of its cooldown.
    """
    from app.adapters.clock import SystemClock
    from app.adapters.rabbit import RabbitPublisher
    from app.services.health import Health
    from app.services.relay import OutboxRelay, TimerLoop

    await prepare_storage(settings)
    log = open_event_log(settings.log_url)
    store = SqlProjectionStore(settings.sql_url)
    clock = SystemClock()
    publisher = RabbitPublisher(settings.rabbit_url, max_priority=policy.document.max_priority)
    relay = OutboxRelay(store, publisher, clock)
    tracker = Tracker(log, store, policy, clock, on_outbox=relay.wake)
    arrivals: dict[str, datetime] = {}
    tasks: list[asyncio.Task[None]] = []
    try:
        await publisher.connect()
        consumer = await _work_queue_arrivals(settings.rabbit_url, policy, arrivals)
        probes = min(jobs, PROBES)
        background = _reserved_jobs(jobs - probes, lease=3600.0)
        for start in range(0, len(background), APPEND_CHUNK):
            await tracker.record(background[start : start + APPEND_CHUNK])
        # The loops run while the probes are recorded, as in a live tracker, at the tracker's
        # setting (JOBTRAIL_TIMER_INTERVAL_MS, default 250 ms).
        interval = settings.timer_interval_ms / 1000
        tasks = [
            asyncio.create_task(TimerLoop(tracker, Health(), interval=interval).run()),
            asyncio.create_task(relay.run()),
        ]
        events = _reserved_jobs(probes, lease=lease)
        for start in range(0, len(events), APPEND_CHUNK):
            await tracker.record(events[start : start + APPEND_CHUNK])
        probed = [e.job_id for e in events[1::2]]
        deadline = datetime.now(UTC) + timedelta(seconds=lease + 60)
        lags = await _expiry_lags(log, probed, deadline)
        retries = await _retry_lateness(
            log, policy, probed, arrivals, deadline + timedelta(seconds=60)
        )
        await consumer.close()
        return {
            "p50": percentile(lags, 0.5),
            "p99": percentile(lags, 0.99),
            "retry_p99": percentile(retries, 0.99),
            "jobs": float(jobs),
        }
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await publisher.close()
        await log.close()
        await store.close()


async def _work_queue_arrivals(
    url: str, policy: Policy, arrivals: dict[str, datetime]
) -> aio_pika.abc.AbstractConnection:
    """Consume the probes' work queue, noting when each retried job (attempt 2) arrives."""
    from app.adapters.rabbit import work_queue_args

    connection = await aio_pika.connect(url)
    channel = await connection.channel()
    queue = await channel.declare_queue(
        "jobtrail.work.gpu-a.batch",
        durable=True,
        arguments=work_queue_args(policy.document.max_priority),
    )

    async def arrived(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        at = datetime.now(UTC)
        job = json.loads(message.body)
        if job.get("attempt") == 2:
            arrivals.setdefault(str(job["job_id"]), at)
        await message.ack()

    await queue.consume(arrived)
    return connection


async def _retry_lateness(
    log: EventLog,
    policy: Policy,
    job_ids: list[str],
    arrivals: dict[str, datetime],
    deadline: datetime,
) -> list[float]:
    """Seconds from each probe's end of cooldown to its job message's arrival (0 if early)."""
    due: dict[str, datetime] = {}
    while len(due) < len(job_ids) and datetime.now(UTC) < deadline:
        pending = [j for j in job_ids if j not in due]
        for job_id, history in (await log.read_jobs(pending)).items():
            ends = [n for n, e in enumerate(history) if e.event.type == "expired"]
            if ends:
                cooling = next_deadline(fold(history[: ends[0] + 1]), policy)
                assert cooling is not None and cooling.kind == "cooldown", cooling
                due[job_id] = cooling.at
        await asyncio.sleep(0.5)
    while len(arrivals) < len(job_ids) and datetime.now(UTC) < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.5)
    late = [max((arrivals[j] - due[j]).total_seconds(), 0.0) for j in job_ids if j in arrivals]
    if len(late) < len(job_ids):
        raise TimeoutError(f"only {len(late)} of {len(job_ids)} retries reached the work queue")
    return late


def _reserved_jobs(count: int, lease: float) -> list[JobEvent]:
    """``count`` jobs, each submitted then reserved with a ``lease``-second lease."""
    now = datetime.now(UTC)
    events: list[JobEvent] = []
    for n in range(count):
        job = f"lease-{uuid.uuid4().hex[:12]}"
        env = {"job_id": job, "occurred_at": now, "source": "bench", "attempt": 1}
        events.append(
            Submitted(
                event_id=uuid.uuid4(),
                job_type="batch",
                model="m",
                priority="bulk",
                tenant="t",
                pool="gpu-a",
                queue="jobtrail.work.gpu-a.batch",
                **env,
            )
        )
        events.append(
            Reserved(event_id=uuid.uuid4(), node_id=f"n{n % 50}", lease_seconds=lease, **env)
        )
    return events


async def _expiry_lags(log: EventLog, job_ids: list[str], deadline: datetime) -> list[float]:
    lags: dict[str, float] = {}
    while len(lags) < len(job_ids) and datetime.now(UTC) < deadline:
        await asyncio.sleep(0.5)
        pending = [j for j in job_ids if j not in lags]
        for job_id, history in (await log.read_jobs(pending)).items():
            reserved = next((e for e in history if e.event.type == "reserved"), None)
            expired = next((e for e in history if e.event.type == "expired"), None)
            if reserved is not None and expired is not None:
                lease = getattr(reserved.event, "lease_seconds", None) or 0.0
                due = reserved.recorded_at + timedelta(seconds=lease)
                lags[job_id] = max((expired.recorded_at - due).total_seconds(), 0.0)
    if len(lags) < len(job_ids):
        raise TimeoutError(f"only {len(lags)} of {len(job_ids)} leases expired in time")
    return list(lags.values())


PROBES = 2000
"""Jobs of the timer scenario whose lease expiries are timed (the rest only fill the table)."""


def rebuild_workload(events: int) -> list[JobEvent]:
    return lifecycle_events(events, run=f"rb{uuid.uuid4().hex[:6]}")


async def fill_log_in_slices(log: EventLog, events: int, size: int = 100_000) -> None:
    """Store ``events`` events of distinct jobs, never holding more than ``size`` in memory."""
    run = uuid.uuid4().hex[:6]
    for index, start in enumerate(range(0, events, size)):
        await fill_log(log, lifecycle_events(min(size, events - start), run=f"m{run}s{index}"))


_PEAK_RSS = (
    "import resource, subprocess, sys; "
    "done = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE); "
    "sys.exit(done.stderr.decode()[-500:]) if done.returncode not in (0, 1) else None; "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


async def peak_rss_mb(settings: Settings, command: Sequence[str]) -> float:
    """Peak resident memory (MB) of one ``jobtrail`` command over the scenario's log."""
    import os
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBTRAIL_")}
    env |= {"JOBTRAIL_LOG_URL": settings.log_url, "JOBTRAIL_SQL_URL": settings.sql_url}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _PEAK_RSS,
        sys.executable,
        "-m",
        "app",
        *command,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"jobtrail {' '.join(command)} failed: {err.decode()[-500:]}")
    return int(out.decode().split()[-1]) / 1024

"""The measured scenarios: the bare aio-pika baseline and Jobtrail's end-to-end ingestion."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import aio_pika
from sqlalchemy import func, select

from app.adapters.rabbit import (
    EVENTS_EXCHANGE,
    JOB_ID_HEADER,
    TRACKER_QUEUE_ARGS,
    declare_topology,
    partition_queue,
)
from app.adapters.sql_log import events_table
from app.adapters.sql_schema import make_engine
from app.bench.rabbit_setup import publish_confirmed
from app.bootstrap import build_tracking, prepare_storage
from app.domain.events import JobEvent
from app.settings import Settings

PREFETCH = 256


def encoded(events: Sequence[JobEvent]) -> list[tuple[bytes, str, dict[str, str]]]:
    return [
        (e.model_dump_json().encode(), f"job.{e.type}", {JOB_ID_HEADER: e.job_id}) for e in events
    ]


async def bare_consume_rate(
    vhost_url: str, messages: Sequence[tuple[bytes, str, dict[str, str]]]
) -> float:
    """Messages/s of bare aio-pika (prefetch 256, an ack each) on a queue like the tracker's."""
    connection = await aio_pika.connect(vhost_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        queue = await channel.declare_queue(
            "bench.baseline", durable=True, arguments=TRACKER_QUEUE_ARGS
        )
        await queue.purge()
        await publish_confirmed(
            channel, channel.default_exchange, [(b, "bench.baseline", h) for b, _, h in messages]
        )
        consumer = await connection.channel()
        await consumer.set_qos(prefetch_count=PREFETCH)
        done, seen = asyncio.Event(), 0

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal seen
            await message.ack()
            seen += 1
            if seen == len(messages):
                done.set()

        q = await consumer.get_queue("bench.baseline")
        started = time.perf_counter()
        tag = await q.consume(on_message)
        await done.wait()
        elapsed = time.perf_counter() - started
        await q.cancel(tag)
        await queue.delete(if_unused=False, if_empty=False)
        return len(messages) / elapsed
    finally:
        await connection.close()


async def _prepublish(settings: Settings, events: Sequence[JobEvent]) -> None:
    """Migrate, then put every event in the partition queues before any tracker runs."""
    await prepare_storage(settings)
    connection = await aio_pika.connect(settings.rabbit_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        await declare_topology(channel, settings.partitions)
        exchange = await channel.get_exchange(EVENTS_EXCHANGE)
        await publish_confirmed(channel, exchange, encoded(events))
        await _wait_for_depth(channel, settings.partitions, len(events))
    finally:
        await connection.close()


async def jobtrail_ingest_rate(
    settings: Settings, events: Sequence[JobEvent], limit: float = 600
) -> float:
    """Events/s from subscriber start until every pre-published event is recorded and acked."""
    from app.bootstrap.worker import create_app  # FastStream: loaded when a bench runs

    await _prepublish(settings, events)
    tracking = build_tracking(settings)
    await tracking.start()
    stream = create_app(tracking)
    started = time.perf_counter()
    await stream.start()
    try:
        deadline = started + limit
        while tracking.batcher.recorded < len(events):
            if time.perf_counter() > deadline:
                raise TimeoutError(f"only {tracking.batcher.recorded} of {len(events)} recorded")
            await asyncio.sleep(0.01)
        return len(events) / (time.perf_counter() - started)
    finally:
        await stream.stop()
        await tracking.stop()


async def _wait_for_depth(
    channel: aio_pika.abc.AbstractChannel, partitions: int, depth: int
) -> None:
    """Wait until the broker reports every published message in the partition queues."""
    for _ in range(600):
        total = 0
        for index in range(partitions):
            declared = await channel.declare_queue(partition_queue(index), passive=True)
            total += declared.declaration_result.message_count or 0
        if total >= depth:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"the partition queues never held {depth} messages")


async def serve_processes_ingest_rate(
    settings: Settings,
    events: Sequence[JobEvent],
    processes: int,
    limit: float = 600,
    *,
    workers: int = 1,
) -> float:
    """Events/s of ``processes`` ``jobtrail serve --workers <workers>`` processes sharing the
    partitions (``processes`` x ``workers`` trackers).

    The processes start together on the pre-published backlog. Timed from the moment every
    tracker consumes its final share (their logs say so) to the last commit (the log's
    ``recorded_at``), counting the events committed in between: the sustained rate, without
    the start-up and the first hand-overs. If the backlog is nearly gone by then (a small
    run), from the first commit to the last instead.
    """
    await _prepublish(settings, events)
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBTRAIL_")}
    env |= {
        "JOBTRAIL_RABBIT_URL": settings.rabbit_url,
        "JOBTRAIL_LOG_URL": settings.log_url,
        "JOBTRAIL_SQL_URL": settings.sql_url,
        "JOBTRAIL_PARTITIONS": str(settings.partitions),
        "JOBTRAIL_PREFETCH": str(settings.prefetch),
        "JOBTRAIL_BATCH_SIZE": str(settings.batch_size),
        "JOBTRAIL_HTTP_PORT": "0",
        "JOBTRAIL_LOG_LEVEL": "INFO",
        "JOBTRAIL_WORKERS": str(workers),
    }
    mine = events_table.c.type.in_(sorted({e.type for e in events}))
    c = events_table.c
    counted = select(func.count(), func.min(c.recorded_at), func.max(c.recorded_at)).where(mine)
    engine = make_engine(settings.log_url)
    with tempfile.TemporaryDirectory(prefix="jobtrail-bench-") as workdir:
        logs = [Path(workdir) / f"serve-{n}.log" for n in range(processes)]
        procs = []
        for path in logs:
            with path.open("wb") as out:  # a file, not a pipe nobody reads: that would block
                procs.append(
                    await asyncio.create_subprocess_exec(
                        sys.executable,
                        "-m",
                        "app",
                        "serve",
                        cwd=workdir,
                        env=env,
                        stdout=out,
                        stderr=asyncio.subprocess.STDOUT,
                    )
                )
        try:
            deadline = time.perf_counter() + limit
            while True:
                async with engine.connect() as conn:
                    count, first, last = (await conn.execute(counted)).one()
                if count >= len(events):
                    break
                for proc, path in zip(procs, logs, strict=True):
                    if proc.returncode is not None:
                        tail = path.read_text(errors="replace")[-2000:]
                        raise RuntimeError(f"a jobtrail serve process ended early:\n{tail}")
                if time.perf_counter() > deadline:
                    raise TimeoutError(f"only {count} of {len(events)} recorded")
                await asyncio.sleep(0.2)
            settled = _settled_at(logs, processes * workers)
            if settled is not None and first < settled < last:
                async with engine.connect() as conn:
                    after = await conn.scalar(
                        select(func.count()).where(mine, c.recorded_at > settled)
                    )
                if after and after >= len(events) // 5:
                    count, first = after, settled
        finally:
            await _stop_all(procs, logs)
            await engine.dispose()
    return float(count / max((last - first).total_seconds(), 0.001))


def _settled_at(logs: Sequence[Path], trackers: int) -> datetime | None:
    """When the last of the trackers logged that it consumes its share among all of them (a
    process's workers share its log; their lines name the worker)."""
    marks: dict[tuple[Path, object], datetime] = {}
    for path in logs:
        for line in path.read_text(errors="replace").splitlines():
            if f"({trackers} trackers live)" in line and '"partitions: consuming' in line:
                record = json.loads(line)
                at = datetime.fromisoformat(record["at"])
                marks.setdefault((path, record.get("worker")), at)
    return max(marks.values()) if len(marks) == trackers else None


async def _stop_all(procs: Sequence[asyncio.subprocess.Process], logs: Sequence[Path]) -> None:
    """SIGTERM every process still running; one that does not stop within 60 s is an error."""
    for proc in procs:
        if proc.returncode is None:
            proc.terminate()
    for proc, path in zip(procs, logs, strict=True):
        try:
            await asyncio.wait_for(proc.wait(), 60)
        except TimeoutError:
            proc.kill()
            tail = path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"a jobtrail serve process did not stop:\n{tail}") from None

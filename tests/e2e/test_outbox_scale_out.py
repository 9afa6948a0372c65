"""Three trackers share the partitions and the outbox: every owed retry reaches the work queue
once. Counted on the real work queue with aio-pika, not taken from Jobtrail's own records."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aio_pika

from app.adapters.rabbit import work_queue_args
from app.adapters.sql_store import SqlProjectionStore
from app.client import JobtrailClient
from app.domain.events import Failed, JobEvent, Reserved, RetryOverride, Submitted
from tests import servers
from tests.e2e.harness import TEST_POLICY, Tracker, tracker_env, wait_for
from tests.e2e.test_scale_out import _shared_by

JOBS = 300
QUEUE = "jobtrail.work.p.batch"
COOLDOWN = 3.0
"""Seconds before each retry: long enough for a round's failures to be recorded before the
first of its retries falls due, so hundreds fall due together (jitter is 0)."""


class WorkQueueCounter:
    """Consumes ``QUEUE`` in a thread of its own, acking and keeping every job message."""

    def __init__(self, rabbit_url: str) -> None:
        self.rabbit_url = rabbit_url
        self.messages: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._consume()), daemon=True)

    def __enter__(self) -> WorkQueueCounter:
        self._thread.start()
        assert self._ready.wait(30), "the work-queue consumer did not start"
        return self

    def __exit__(self, *_: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def seen(self) -> set[tuple[str, int]]:
        """The (job, attempt) pairs received so far."""
        with self._lock:
            return {(m["job_id"], m["attempt"]) for m in self.messages}

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.messages)

    async def _consume(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        connection = await aio_pika.connect_robust(self.rabbit_url)
        try:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=500)
            # Declared as the trackers declare it, so that nothing published is dropped.
            queue = await channel.declare_queue(QUEUE, durable=True, arguments=work_queue_args(9))
            await queue.consume(self._on_message)
            self._ready.set()
            await self._stop.wait()
        finally:
            await connection.close()

    async def _on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        body = json.loads(message.body)
        seen = {
            "job_id": body["job_id"],
            "attempt": body["attempt"],
            "message_id": message.message_id,
            "event_id_header": message.headers.get("x-jobtrail-event-id"),
            "redelivered": message.redelivered,
        }
        with self._lock:
            self.messages.append(seen)
        await message.ack()


def _envelope(job_id: str, attempt: int) -> dict[str, Any]:
    return {
        "event_id": uuid.uuid4(),
        "job_id": job_id,
        "attempt": attempt,
        "occurred_at": datetime.now(UTC),
        "source": "load",
    }


def _first_round(jobs: list[str]) -> list[JobEvent]:
    """Each job submitted (with its own short cooldown), reserved, and failed retryably."""
    retry = RetryOverride(
        initial_interval_seconds=COOLDOWN, backoff_coefficient=1, max_interval_seconds=COOLDOWN
    )
    events: list[JobEvent] = []
    for job_id in jobs:
        events.append(
            Submitted(
                **_envelope(job_id, 1),
                job_type="batch",
                model="m",
                priority="bulk",
                tenant="t",
                pool="p",
                queue=QUEUE,
                payload={"job": job_id},
                max_attempts=3,
                retry=retry,
            )
        )
    return events + _fail(jobs, 1)


def _fail(jobs: list[str], attempt: int) -> list[JobEvent]:
    events: list[JobEvent] = []
    for job_id in jobs:
        events.append(Reserved(**_envelope(job_id, attempt), node_id="n1"))
        events.append(
            Failed(**_envelope(job_id, attempt), node_id="n1", error_code="oom", retryable=True)
        )
    return events


def _publish(rabbit_url: str, events: list[JobEvent]) -> None:
    async def go() -> None:
        async with JobtrailClient(rabbit_url, "load") as client:
            for event in events:
                await client.publish(event)

    asyncio.run(go())


def _outbox_empty(sql_url: str) -> bool:
    async def pending() -> int:
        store = SqlProjectionStore(sql_url)
        try:
            return len(await store.pending_outbox(1))
        finally:
            await store.close()

    return asyncio.run(pending()) == 0


def test_three_trackers_publish_every_due_retry_once(
    pg_url: str, rabbit_url: str, tmp_path: Path
) -> None:
    trackers = []
    for n in range(3):
        workdir = tmp_path / f"tracker-{n}"
        workdir.mkdir()
        env = tracker_env(rabbit_url, pg_url, pg_url, workdir)
        (workdir / "policy.toml").write_text(TEST_POLICY.replace("jitter = 0.2", "jitter = 0.0"))
        trackers.append(Tracker(env, workdir))
    jobs = [f"retry-{n:04d}" for n in range(JOBS)]
    owed = {(job_id, attempt) for job_id in jobs for attempt in (2, 3)}
    with WorkQueueCounter(rabbit_url) as counter:
        try:
            for tracker in trackers:
                tracker.start()
            wait_for(lambda: _shared_by(rabbit_url, trackers, 3), "three trackers to share")
            _publish(rabbit_url, _first_round(jobs))
            wait_for(
                lambda: all((j, 2) in counter.seen() for j in jobs),
                "every job's second attempt on the work queue",
                timeout=180,
            )
            _publish(rabbit_url, _fail(jobs, 2))
            wait_for(
                lambda: owed <= counter.seen() and _outbox_empty(pg_url),
                "every owed retry on the work queue and the outbox published",
                timeout=180,
            )
        finally:
            codes = [tracker.stop() for tracker in trackers]
        # No tracker runs any more, so nothing more is published; once the queue holds nothing,
        # ready or unacknowledged, every copy that reached it is in the counter's list.
        wait_for(lambda: servers.all_acknowledged(rabbit_url, [QUEUE]), "the work queue consumed")
        messages = counter.snapshot()
    keys = Counter((m["job_id"], m["attempt"]) for m in messages)
    duplicated = {key: count for key, count in keys.items() if count > 1}
    assert duplicated == {}, f"{sum(duplicated.values()) - len(duplicated)} duplicates"
    assert set(keys) == owed, "exactly the owed retries, each once"
    assert all(m["message_id"] == m["event_id_header"] is not None for m in messages)
    assert len({m["message_id"] for m in messages}) == len(owed)
    assert codes == [0, 0, 0], [t.log_text()[-2000:] for t in trackers]

"""The simulated Cloud and node fleet: they reach Jobtrail only through RabbitMQ, as real ones do.

The Cloud submits jobs with ``JobtrailClient.submit``; each node consumes its pool's work queues
(aio-pika), publishes ``reserved`` then acknowledges the message, works (sending heartbeats on
long jobs) and reports ``completed`` or ``failed`` — or, when it stalls, reports nothing until
its lease has long run out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection

from app.client import JobtrailClient
from app.demo.scenario import (
    LEASE_SECONDS,
    MESSAGES,
    OK,
    RETRYABLE,
    STALL,
    DemoConfig,
    JobPlan,
    NodeSpec,
    outcome,
    random_job,
    showcase_jobs,
    work_queues,
    work_seconds,
)
from app.domain.events import Completed, JobEvent
from app.domain.state import JobState
from app.ports import PublishFailed
from app.ports.topology import work_queue_args
from app.services.tracking import Tracker

log = logging.getLogger("jobtrail.demo")

HEARTBEAT_SECONDS = 0.8
STALL_SECONDS = LEASE_SECONDS + 2.5  # well past the lease, even on a busy machine
MAX_PRIORITY = 9
FLEET_ERRORS = (PublishFailed, aio_pika.exceptions.AMQPError, aiormq.exceptions.AMQPError, OSError)


@dataclass
class Tally:
    """What happened to this run's jobs, as the Cloud, the nodes and the tracker saw it."""

    prefix: str
    submitted: int = 0
    reports: Counter[str] = field(default_factory=Counter)
    decided: dict[str, set[str]] = field(default_factory=dict)
    completed: set[str] = field(default_factory=set)
    showcase: dict[str, str] = field(default_factory=dict)

    def watch(self, tracker: Tracker) -> None:
        """Listen to the tracker's decisions and recorded events (after its other listeners)."""
        decision, recorded = tracker.on_decision, tracker.on_recorded

        def on_decision(event: JobEvent, state: JobState) -> None:
            if decision is not None:
                decision(event, state)
            self.on_decision(event)

        def on_recorded(events: Sequence[JobEvent], now: datetime) -> None:
            if recorded is not None:
                recorded(events, now)
            self.completed.update(
                e.job_id for e in events if isinstance(e, Completed) and self.ours(e.job_id)
            )

        tracker.on_decision, tracker.on_recorded = on_decision, on_recorded

    def ours(self, job_id: str) -> bool:
        return job_id.startswith(self.prefix)

    def on_decision(self, event: JobEvent) -> None:
        if self.ours(event.job_id):
            kind = f"{event.type}:{event.reason}" if event.type == "expired" else event.type
            self.decided.setdefault(kind, set()).add(event.job_id)

    def jobs(self, kind: str) -> set[str]:
        return self.decided.get(kind, set())


class Cloud:
    """Submits the showcase jobs, then the random mix at ``config.rate`` jobs per second."""

    def __init__(
        self, rabbit_url: str, run_id: str, config: DemoConfig, tally: Tally, rng: random.Random
    ) -> None:
        self._url = rabbit_url
        self._run_id = run_id
        self._config = config
        self._tally = tally
        self._rng = rng

    async def run(self, stop: asyncio.Event) -> None:
        async with JobtrailClient(self._url, source="cloud") as client:
            for plan in showcase_jobs(self._run_id, self._config):
                await self._submit(client, plan)
                assert plan.showcase is not None
                self._tally.showcase[plan.showcase] = plan.job_id
            started = time.monotonic()
            number = 0
            while not stop.is_set() and time.monotonic() - started < self._config.submit_for:
                number += 1
                plan = random_job(self._rng, self._run_id, number, self._config)
                await self._submit(client, plan)
                wait = started + number / self._config.rate - time.monotonic()
                if wait > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), wait)

    async def _submit(self, client: JobtrailClient, plan: JobPlan) -> None:
        await client.submit(
            plan.job_id,
            job_type=plan.job_type,
            model=plan.model,
            priority=plan.priority,
            tenant=plan.tenant,
            pool=plan.pool,
            payload=plan.payload,
            max_priority=MAX_PRIORITY,
            **plan.overrides,
        )
        self._tally.submitted += 1


class Node:
    """A node serving one pool's work queues, one job at a time."""

    def __init__(
        self, spec: NodeSpec, rabbit_url: str, config: DemoConfig, tally: Tally, seed: int
    ) -> None:
        self.spec = spec
        self._config = config
        self._tally = tally
        self._rng = random.Random(seed)
        self._client = JobtrailClient(rabbit_url, source=spec.node_id)
        self._channel: AbstractChannel | None = None
        self._lock = asyncio.Lock()
        self._busy: set[asyncio.Task[object]] = set()

    async def start(self, connection: AbstractRobustConnection) -> None:
        await self._client.__aenter__()
        self._channel = await connection.channel()
        await self._channel.set_qos(prefetch_count=1)
        for name in work_queues(self.spec.pool):
            queue = await self._channel.declare_queue(
                name, durable=True, arguments=work_queue_args(MAX_PRIORITY)
            )
            await queue.consume(self._on_message)

    async def stop(self) -> None:
        for task in list(self._busy):
            task.cancel()
        await asyncio.gather(*self._busy, return_exceptions=True)
        with contextlib.suppress(*FLEET_ERRORS):
            if self._channel is not None:
                await self._channel.close()
        with contextlib.suppress(*FLEET_ERRORS):
            await self._client.__aexit__(None, None, None)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._busy.add(task)
        try:
            async with self._lock:
                await self._handle(message)
        except FLEET_ERRORS as exc:  # the demo is stopping, or the broker went away
            log.debug("node %s dropped a job: %r", self.spec.node_id, exc)
        finally:
            self._busy.discard(task)

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        try:
            body = json.loads(message.body)
            job_id, attempt = str(body["job_id"]), int(body["attempt"])
        except (ValueError, KeyError, TypeError):
            await message.reject(requeue=False)  # RabbitMQ dead-letters it to Jobtrail
            return
        payload = body.get("payload")
        node = self.spec.node_id
        await self._client.reserved(job_id, attempt, node)
        await message.ack()
        result = outcome(self._rng, self.spec, self._config, payload, attempt)
        self._tally.reports[result] += 1
        started = time.monotonic()
        if result == STALL:
            await asyncio.sleep(STALL_SECONDS)  # no heartbeat: the lease runs out
        else:
            await self._work(job_id, attempt, work_seconds(payload))
        if result in (OK, STALL):
            elapsed_ms = int((time.monotonic() - started) * 1000)
            await self._client.completed(job_id, attempt, node, duration_ms=elapsed_ms)
            return
        message_text = MESSAGES.get(result, "")
        retryable = RETRYABLE.get(result, True)
        await self._client.failed(job_id, attempt, node, result, message_text, retryable=retryable)

    async def _work(self, job_id: str, attempt: int, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(left, HEARTBEAT_SECONDS))
            if deadline - time.monotonic() > 0:
                await self._client.heartbeat(job_id, attempt, self.spec.node_id)


async def start_fleet(
    connection: AbstractRobustConnection,
    specs: Sequence[NodeSpec],
    make: Callable[[NodeSpec, int], Node],
) -> list[Node]:
    """Start a node per spec (seeded by its index); stops those started if one fails."""
    nodes: list[Node] = []
    try:
        for index, spec in enumerate(specs):
            node = make(spec, index)
            nodes.append(node)
            await node.start(connection)
    except BaseException:
        await stop_fleet(nodes)
        raise
    return nodes


async def stop_fleet(nodes: Sequence[Node]) -> None:
    await asyncio.gather(*(node.stop() for node in nodes), return_exceptions=True)

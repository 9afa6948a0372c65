"""Three trackers share the partitions while a random one is SIGKILLed every few seconds.

A stream heavy in retries and reroutes (1 s cooldowns, a flaky pool rerouted after one failure)
is published while one of three ``jobtrail serve`` processes (PostgreSQL log and projections,
shared) is killed and restarted, again and again; the last part of the stream and the wait for
the last decisions run with no kill at all. A consumer on the real work queues (and
``jobtrail.dead``) records every job message Jobtrail publishes: its ``message_id``, its
``x-jobtrail-event-id`` and ``x-jobtrail-attempt`` headers, and when it arrived.

The guarantee checked (docs/protocol.md): one publication per decision. A (job, attempt) may
reach the work queues twice only across a crash (a tracker killed between the broker's confirm
and marking the row published), and then both copies carry the same message id; never two
decisions for one attempt. (docs/protocol.md also names a copy without a crash: a publish the
broker took whose confirm was lost; this test still counts such a copy as a failure, to see it.)
And, as everywhere in this suite: nothing lost or stored twice in the log, seq gapless, every job
in its expected final state, projection = fold, ``verify`` 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any

import aio_pika

from app.adapters.rabbit import DEAD_QUEUE, work_queue_args
from tests import servers
from tests.e2e.harness import cli, wait_for
from tests.faults.conftest import (
    SCALE,
    Census,
    FaultTracker,
    partitions_idle,
    quarantined,
    queue_depths,
    rng,
    settle,
    write_artifact,
)
from tests.faults.test_kill_storm import (
    Progress,
    Stream,
    interleaved_stream,
    publish_events,
)
from tests.faults.trackers import (
    EVERY_RUN_ZERO,
    MARKS,
    assert_zero,
    build_trackers,
    process_counts,
    start_all,
)

# The short form is part of `make test`: 8 runs on a busy machine (load average 6-14 on 2 cores)
# saw no copy without a kill near it (docs/reliability.md; two earlier runs had some).
pytestmark = MARKS

TRACKERS = 3
# (events, least kills, events per second): the full form is the figure; the short form
# takes about two minutes on a busy 2-core machine (a restart there takes 10-30 s, and the third
# kill waits for one).
SIZES = {"short": (3_000, 3, 80.0), "full": (20_000, 12, 80.0)}
EVENTS, LEAST_KILLS, RATE = SIZES[SCALE.name]
QUIET_TAIL = 0.15
"""The share of the stream published after the last kill (unless kills are still owed), and
the decisions that follow it: duplicates there have no excuse."""
CRASH_MARGIN = 2.0
"""Seconds a copy may reach our consumer after the kill that came just after its publish."""
MIX = {"retried": 4, "rerouted": 3, "lease_runs_out": 1, "completes": 1, "fails_for_good": 1}
WORK_QUEUES = ("jobtrail.work.p.batch", "jobtrail.work.steady.batch", "jobtrail.work.flaky.batch")


def retry_stream(count: int, prefix: str, chooser: Any) -> Stream:
    """About ``count`` events, mostly jobs that fail and are retried or rerouted, in waves."""
    names, weights = zip(*sorted(MIX.items()), strict=True)
    return interleaved_stream(count, prefix, lambda _: chooser.choices(names, weights)[0])


@dataclass(frozen=True)
class WorkMessage:
    """One job message as a node would take it from a work queue."""

    queue: str
    job_id: str
    attempt: int
    message_id: str | None
    event_id: str
    at: float
    """``time.time()`` when it reached the consumer."""
    published: float | None = None
    """When the tracker published it (its AMQP timestamp, whole seconds): unlike ``at``, not
    moved by our consumer falling behind on a loaded machine."""
    redelivered: bool = False
    """RabbitMQ gave this copy to our consumer again (its connection dropped before our ack):
    one publication seen twice, not a second publication."""


@dataclass
class WorkQueueCounter:
    """Consumes (and acks) every message of the work queues and ``jobtrail.dead`` as it comes."""

    rabbit_url: str
    seen: list[WorkMessage] = field(default_factory=list)
    _connection: aio_pika.abc.AbstractRobustConnection | None = None

    async def start(self) -> None:
        self._connection = await aio_pika.connect_robust(self.rabbit_url)
        channel = await self._connection.channel()
        await channel.set_qos(prefetch_count=1000)
        for name in WORK_QUEUES:  # as the relay declares them (it may do so first)
            queue = await channel.declare_queue(name, durable=True, arguments=work_queue_args(9))
            await queue.consume(self._take(name))
        dead = await channel.declare_queue(DEAD_QUEUE, passive=True)  # the trackers declared it
        await dead.consume(self._take(DEAD_QUEUE))

    def _take(self, queue: str) -> Callable[[aio_pika.abc.AbstractIncomingMessage], Any]:
        async def take(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            headers = message.headers or {}
            self.seen.append(
                WorkMessage(
                    queue=queue,
                    job_id=str(headers.get("x-jobtrail-job-id")),
                    attempt=int(str(headers.get("x-jobtrail-attempt", 0))),
                    message_id=message.message_id,
                    event_id=str(headers.get("x-jobtrail-event-id")),
                    at=time.time(),
                    published=_published(message),
                    redelivered=bool(message.redelivered),
                )
            )
            await message.ack()

        return take

    async def drained(self, within: float) -> None:
        """Wait (bounded) until the counted queues hold nothing, ready or unacknowledged: every
        message that reached them is in ``seen`` (once nothing publishes any more)."""
        queues = [*WORK_QUEUES, DEAD_QUEUE]
        deadline = time.monotonic() + within
        while not await asyncio.to_thread(servers.all_acknowledged, self.rabbit_url, queues):
            if time.monotonic() > deadline:
                raise AssertionError(f"the work queues still hold messages after {within:.0f} s")
            await asyncio.sleep(0.2)

    async def stop(self) -> None:
        if self._connection is not None:
            await self._connection.close()


def _published(message: aio_pika.abc.AbstractIncomingMessage) -> float | None:
    stamp = message.timestamp
    if stamp is None:
        return None
    return (stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)).timestamp()


def _sent(message: WorkMessage) -> float:
    """When a copy left its tracker: its timestamp if it has one (whole seconds, so up to 1 s
    early: the window's end gets 1 s more), else when it reached us."""
    return message.at if message.published is None else message.published


def unconfirmed_publishes(trackers: list[FaultTracker]) -> set[str]:
    """Event ids the relays logged as published without a confirm in time, then made again
    (the third case of a repeat in docs/protocol.md: the first one may have landed)."""
    ids: set[str] = set()
    for tracker in trackers:
        for line in tracker.all_logs().splitlines():
            if "publishes not confirmed" in line:
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    ids.update(map(str, json.loads(line)["event_ids"]))
    return ids


def publication_counts(
    seen: list[WorkMessage], kills: list[float], census: Census, unconfirmed: set[str]
) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """The work-queue figures, and (for the artifact) duplicates, those unexplained first: a
    repeat is explained by a kill near it or by its relay's log of an unconfirmed publish."""
    groups: dict[tuple[str, int], list[WorkMessage]] = defaultdict(list)
    again = {(m.event_id, m.queue) for m in seen if not m.redelivered}
    for message in seen:
        if message.redelivered and (message.event_id, message.queue) in again:
            continue  # our consumer's second sight of one publication
        groups[(message.job_id, message.attempt)].append(message)
    extra_same_id = without_crash = two_ids = after_unconfirmed = 0
    examples: list[dict[str, Any]] = []
    origin = kills[0] if kills else 0.0
    for (job_id, attempt), copies in groups.items():
        if len(copies) == 1:
            continue
        ids = {c.message_id for c in copies}
        two_ids += len(ids) > 1
        extra_same_id += len(copies) - 1 if len(ids) == 1 else 0
        first = _sent(copies[0])
        no_kill = [c for c in copies[1:]
                   if not any(first - CRASH_MARGIN <= k <= _sent(c) + 1 for k in kills)]  # fmt: skip
        unexplained = [c for c in no_kill if c.event_id not in unconfirmed]
        after_unconfirmed += len(no_kill) - len(unexplained)
        without_crash += len(unexplained)
        examples.append({
            "job_id": job_id, "attempt": attempt, "message_ids": sorted(map(str, ids)),
            "queues": [c.queue for c in copies], "explained": not unexplained,
            "explained_by_a_kill": not no_kill,
            "arrived_s_after_first_kill": [round(c.at - origin, 3) for c in copies],
        })  # fmt: skip
    examples.sort(key=lambda e: bool(e["explained"]))
    owed = {event_id for _, event_id, _ in census.republishes}
    got = {m.event_id for m in seen}
    return {
        "work_messages": len(seen),
        "counter_redeliveries": sum(1 for m in seen if m.redelivered),
        "work_attempts": len(groups),
        "work_duplicates": sum(len(copies) for copies in groups.values()) - len(groups),
        "duplicates_same_message_id": extra_same_id,
        "attempts_under_two_message_ids": two_ids,
        "duplicates_after_an_unconfirmed_publish": after_unconfirmed,
        "duplicates_without_a_crash": without_crash,
        "message_id_not_event_id": sum(1 for m in seen if m.message_id != m.event_id),
        "republishes_owed": len(owed),
        "republishes_missing": len(owed - got),
        "published_not_owed": len(got - owed),
    }, examples[:20]


def mentions(trackers: list[FaultTracker], examples: list[dict[str, Any]]) -> dict[str, Any]:
    """The trackers' log lines naming the jobs of duplicates no kill explains, and the relays'
    warnings when there are such duplicates (for diagnosis)."""
    jobs = [e["job_id"] for e in examples if not e["explained"]][:5]
    found: dict[str, Any] = {job: [] for job in jobs}
    relay: list[str] = []
    for n, tracker in enumerate(trackers):
        for line in tracker.all_logs().splitlines():
            if jobs and '"jobtrail.relay"' in line and len(relay) < 60:
                relay.append(f"tracker {n}: {line[:400]}")
            for job in jobs:
                if job in line:
                    found[job].append(f"tracker {n}: {line[:400]}")
    return found | ({"relay_warnings": relay} if relay else {})


def consuming_trackers(rabbit_url: str) -> int:
    """How many trackers consume partition queues (0 until every partition has a consumer)."""
    try:
        consumers = servers.active_consumers(rabbit_url)
    except (TypeError, KeyError):  # a consumer listed while its channel closes (no details yet)
        return 0
    partitions = {q: names for q, names in consumers.items() if q.startswith("jobtrail.tracker.")}
    if len(partitions) < 4 or not all(partitions.values()):
        return 0
    # Connections name themselves "jobtrail <member> partition <n>".
    return len({names[0].rsplit(" partition", 1)[0] for names in partitions.values()})


@dataclass
class Storm:
    """What the storm did: messages sent, and each kill's moment, victim and restart time."""

    sent: int = 0
    kills: list[float] = field(default_factory=list)
    """``time.time()`` of each SIGKILL (wall time, to compare with AMQP timestamps)."""
    victims: list[int] = field(default_factory=list)
    restart_seconds: list[float] = field(default_factory=list)
    restarts: list[asyncio.Task[None]] = field(default_factory=list)
    """The restarts, running in the background (the last ones overlap the final wait)."""

    async def restart(self, tracker: FaultTracker) -> None:
        began = time.monotonic()
        await asyncio.to_thread(tracker.start)
        self.restart_seconds.append(round(time.monotonic() - began, 1))


async def _storm(
    trackers: list[FaultTracker], rabbit_url: str, stream: Stream, chooser: Any
) -> Storm:
    """Publish the stream (paced) and SIGKILL a random running tracker every 2-4 s until the
    quiet tail (and at least ``LEAST_KILLS`` times: restarts are slow on a busy machine),
    restarting each in the background (two may be down at once, never three); returns once
    everything is published, the last restarts still under way (``Storm.restarts``)."""
    progress, storm = Progress(), Storm()
    quiet_from = int(len(stream.events) * (1 - QUIET_TAIL))
    publishing = asyncio.create_task(
        publish_events(rabbit_url, stream.events, progress=progress, per_second=RATE)
    )
    restarts: dict[int, asyncio.Task[None]] = {}
    while True:
        await asyncio.wait({publishing}, timeout=chooser.uniform(2.0, 4.0))
        quiet = publishing.done() or progress.sent >= quiet_from
        if quiet and len(storm.kills) >= LEAST_KILLS:
            break
        running = [n for n in range(len(trackers)) if n not in restarts or restarts[n].done()]
        if len(running) < 2:
            continue
        victim = chooser.choice(running)
        await asyncio.to_thread(trackers[victim].kill)
        storm.kills.append(time.time())
        storm.victims.append(victim)
        restarts[victim] = asyncio.create_task(storm.restart(trackers[victim]))
        storm.restarts.append(restarts[victim])
    storm.sent = await publishing
    return storm


async def _run(
    trackers: list[FaultTracker], rabbit_url: str, stream: Stream, chooser: Any
) -> tuple[list[WorkMessage], Storm, Census, dict[str, Any]]:
    """The storm, then the wait for every event and decision, counting the work queues all along
    (the census runs in a thread: the consumer lives on this loop). The trackers are stopped
    (their exit codes in ``counts["exit_codes"]``) before the last count: then nothing publishes
    any more, and queues holding nothing mean every copy was counted."""
    counter = WorkQueueCounter(rabbit_url)
    await counter.start()
    try:
        storm = await _storm(trackers, rabbit_url, stream, chooser)
        settling = asyncio.to_thread(
            settle, trackers[0].env, stream.event_ids,
            lambda: partitions_idle(queue_depths(rabbit_url)), stream.unsettled,
        )  # fmt: skip
        # The survivors settle everything while the last victims start again (no more kills).
        (census, counts), _ = await asyncio.gather(settling, asyncio.gather(*storm.restarts))
        counts["exit_codes"] = await asyncio.to_thread(lambda: [t.stop() for t in trackers])
        await counter.drained(within=60)
    finally:
        await counter.stop()
    return counter.seen, storm, census, counts


MUST_BE_ZERO = (
    *EVERY_RUN_ZERO, "outbox_pending", "republishes_missing", "published_not_owed",
    "attempts_under_two_message_ids", "duplicates_without_a_crash", "message_id_not_event_id",
)  # fmt: skip


def test_three_trackers_killed_at_random_publish_each_decision_once(
    rabbit_url: str, fault_tracker: Callable[[dict[str, str]], FaultTracker], tmp_path: Path
) -> None:
    started = time.monotonic()
    chooser = rng("multi_tracker_kills")
    stream = retry_stream(EVENTS, f"multi-{uuid.uuid4().hex[:6]}", chooser)
    with servers.pg_database() as log_url, servers.pg_database() as sql_url:
        trackers = build_trackers(
            fault_tracker, tmp_path, [rabbit_url] * TRACKERS, log_url, sql_url
        )
        start_all(trackers)
        wait_for(lambda: consuming_trackers(rabbit_url) == TRACKERS,
                 "the three trackers to share the partitions", 60)  # fmt: skip
        seen, storm, census, counts = asyncio.run(_run(trackers, rabbit_url, stream, chooser))
        env = trackers[0].env
        unconfirmed = unconfirmed_publishes(trackers)
        published, examples = publication_counts(seen, storm.kills, census, unconfirmed)
        counts |= published | {"quarantined": quarantined(rabbit_url)}
        verify_code, verify_out = cli(env, "verify")
    counts |= process_counts(trackers, counts.pop("exit_codes")) | {
        "messages_sent": storm.sent,
        "kills": sum(t.kills for t in trackers),
        "retried": census.types["retried"],
        "rerouted": census.types["rerouted"],
        "verify_exit": verify_code,
    }
    write_artifact("multi_tracker_kills", counts, started, trackers=TRACKERS,
                   kills_s_after_first=[round(k - storm.kills[0], 3) for k in storm.kills],
                   kills_by_tracker=storm.victims,
                   restart_seconds=storm.restart_seconds, event_types=dict(census.types),
                   duplicates=examples, duplicate_log_lines=mentions(trackers, examples),
                   unsettled=census.describe(stream.unsettled(census)))  # fmt: skip
    assert_zero(counts, MUST_BE_ZERO, examples, verify_out[-2000:])
    assert counts["kills"] >= LEAST_KILLS, counts
    assert counts["jobs"] == len(stream.expected)
    if SCALE.name == "full":
        assert counts["retried"] + counts["rerouted"] >= 2_000, counts

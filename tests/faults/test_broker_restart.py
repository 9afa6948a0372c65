"""RabbitMQ stops mid-stream and starts again: the tracker reconnects and loses nothing.

A private RabbitMQ node (scripts/private_servers.py), never the machine-wide one. First a plain
restart (queues and messages kept); then a node that comes back empty, so the tracker must
declare its whole topology again before producers can publish.

Known bug (xfail below): a publish while the connection is down raises a bare ``RuntimeError``
that ``RabbitPublisher`` does not translate, which ends the outbox relay's task for good; the
republishes owed after that stay in the outbox. The event-side counts hold regardless.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from app.adapters.rabbit import RabbitPublisher
from app.domain.events import RetryOverride
from app.ports import OutboxMessage, PublishFailed
from scripts.private_servers import PrivateRabbit
from tests import servers
from tests.e2e.harness import wait_for
from tests.faults.conftest import (
    SCALE,
    Census,
    FaultTracker,
    drain,
    make_env,
    partitions_idle,
    quarantined,
    republish_check,
    rng,
    settle,
    write_artifact,
)
from tests.faults.test_kill_storm import Stream, lifecycle_stream, publish_events, scenario_events

pytestmark = [pytest.mark.faults, pytest.mark.timeout(SCALE.test_timeout)]

EVENT_SIDE = ("lost", "duplicated", "gaps", "mismatched", "quarantined", "crashes", "tracebacks")
OUTBOX_SIDE = ("outbox_pending", "republishes_missing")
RELAY_BUG = (
    "RabbitPublisher lets aio-pika's RuntimeError('<Connection ...> closed') escape while the "
    "broker is down; OutboxRelay.run catches only StoreUnavailable/PublishFailed, so its task "
    "dies silently and owed republishes stay in the outbox until the tracker restarts"
)


@pytest.fixture(scope="module")
def private_rabbit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRabbit]:
    with PrivateRabbit(tmp_path_factory.mktemp("rabbit")) as node:
        yield node


@pytest.fixture
def stores() -> Iterator[tuple[str, str]]:
    with servers.pg_database() as log_url, servers.pg_database() as sql_url:
        yield log_url, sql_url


def _stopped_for(
    node: PrivateRabbit, tracker: FaultTracker, seconds: float, wipe: bool
) -> tuple[bool, list[str]]:
    """Stop the node for ``seconds`` (wiping its data if asked): whether the tracker stayed up,
    and when the broker went and came back (UTC, for the artifact)."""
    moments = [f"{datetime.now(UTC):%H:%M:%S.%f}"]
    node.stop()
    if wipe:
        node.wipe()
    alive = True
    until = time.monotonic() + seconds
    while time.monotonic() < until:  # the broker outage itself; the tracker must ride it out
        alive &= tracker.alive()
        time.sleep(0.5)
    node.start()
    moments.append(f"{datetime.now(UTC):%H:%M:%S.%f}")
    return alive and tracker.alive(), moments


def _counts(
    tracker: FaultTracker, node: PrivateRabbit, stream: Stream, prefix: str, alive: bool
) -> tuple[dict[str, Any], Census]:
    census, counts = settle(
        tracker.env,
        stream.event_ids,
        lambda: partitions_idle(node.queues()),
        stream.unsettled,
        outbox=False,  # see RELAY_BUG: do not spend a minute waiting for it
    )
    kinds = tracker.tracebacks()
    return counts | republish_check(node.url, census, prefix) | {
        "quarantined": quarantined(node.url),
        "crashes": tracker.crashes() + (not alive),
        "tracebacks": kinds["app"],
        "amqp_library_tracebacks": kinds["amqp_library"],
        "handler_cancelled_tracebacks": kinds["handler_cancelled"],
    }, census


def test_broker_restart_mid_stream_loses_nothing(
    private_rabbit: PrivateRabbit,
    stores: tuple[str, str],
    fault_tracker: Callable[[dict[str, str]], FaultTracker],
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    prefix = f"broker-{uuid.uuid4().hex[:6]}"
    stream = lifecycle_stream(SCALE.broker_events, prefix, rng("broker_restart"))
    tracker = fault_tracker(make_env(private_rabbit.url, *stores, tmp_path))
    tracker.start()
    half = len(stream.events) // 2
    sent = asyncio.run(publish_events(private_rabbit.url, stream.events[:half]))
    alive, moments = _stopped_for(private_rabbit, tracker, SCALE.broker_down_seconds, wipe=False)
    sent += asyncio.run(publish_events(private_rabbit.url, stream.events[half:]))
    counts, census = _counts(tracker, private_rabbit, stream, prefix, alive)
    counts["messages_sent"] = sent
    reordered = census.describe(stream.unsettled(census), limit=5)
    write_artifact("broker_restart", counts, started, down_seconds=SCALE.broker_down_seconds,
                   broker_stopped_and_back=moments, unsettled=reordered)  # fmt: skip
    # Bug 2 (fixed by the ring barrier): after RabbitMQ rebuilt its hash ring in another order,
    # jobs' events published before the stop were recorded after those published after it.
    settled = (*EVENT_SIDE, "unsettled_jobs", "anomalies")
    assert {k: counts[k] for k in settled} == dict.fromkeys(settled, 0), (counts, reordered)
    assert counts["republishes_owed"] > 0
    assert tracker.stop() == 0


def test_broker_back_empty_gets_the_topology_again(
    private_rabbit: PrivateRabbit,
    stores: tuple[str, str],
    fault_tracker: Callable[[dict[str, str]], FaultTracker],
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    tracker = fault_tracker(make_env(private_rabbit.url, *stores, tmp_path))
    tracker.start()
    before = lifecycle_stream(150, f"before-{uuid.uuid4().hex[:6]}", rng("broker_wipe_1"))
    asyncio.run(publish_events(private_rabbit.url, before.events))
    idle = lambda: partitions_idle(private_rabbit.queues())  # noqa: E731
    settle(tracker.env, before.event_ids, idle, before.unsettled, outbox=False)
    alive, _ = _stopped_for(private_rabbit, tracker, 2.0, wipe=True)
    wanted = {"jobtrail.quarantine", "jobtrail.dead", "jobtrail.tracker.0"}
    wait_for(lambda: wanted <= set(private_rabbit.queues()), "the topology declared again", 60)
    prefix = f"after-{uuid.uuid4().hex[:6]}"
    after = lifecycle_stream(300, prefix, rng("broker_wipe_2"))
    sent = asyncio.run(publish_events(private_rabbit.url, after.events))
    both = Stream(before.events + after.events, before.expected | after.expected)
    counts, census = _counts(tracker, private_rabbit, both, prefix, alive)
    counts["messages_sent"] = sent
    write_artifact(
        "broker_wiped", counts, started, unsettled=census.describe(both.unsettled(census))
    )
    settled = (*EVENT_SIDE, "unsettled_jobs", "anomalies")
    assert {k: counts[k] for k in settled} == dict.fromkeys(settled, 0), counts
    assert tracker.stop() == 0


@pytest.mark.skipif(SCALE.name != "full", reason="full form only (the next test, 4 s, shows it)")
def test_republishes_owed_during_a_broker_outage_are_published_after_it(
    private_rabbit: PrivateRabbit,
    stores: tuple[str, str],
    fault_tracker: Callable[[dict[str, str]], FaultTracker],
    tmp_path: Path,
) -> None:
    """One retryable failure whose cooldown ends while the broker is down: its retry is owed."""
    tracker = fault_tracker(make_env(private_rabbit.url, *stores, tmp_path))
    tracker.start()
    job = f"relay-{uuid.uuid4().hex[:8]}"
    events = scenario_events(job, ("submitted", "reserved", "failed"))
    slow = RetryOverride(initial_interval_seconds=5, max_interval_seconds=5)
    events[0] = events[0].model_copy(update={"retry": slow})  # ends while the broker is down
    asyncio.run(publish_events(private_rabbit.url, events, duplicate_every=0))
    stream = Stream(events, {job: ("cooling_down", 1, "p")})
    settle(tracker.env, stream.event_ids, lambda: True, stream.unsettled, outbox=False)
    alive, _ = _stopped_for(private_rabbit, tracker, 8.0, wipe=False)
    retried = Stream(events, {job: ("queued", 2, "p")})
    census, counts = settle(
        tracker.env, stream.event_ids, lambda: True, retried.unsettled, patience=20
    )
    counts |= republish_check(private_rabbit.url, census, job)
    assert alive and counts["unsettled_jobs"] == 0, counts  # the retry was decided...
    assert {k: counts[k] for k in OUTBOX_SIDE} == dict.fromkeys(OUTBOX_SIDE, 0), counts  # ...sent


def _outbox_message(n: int) -> OutboxMessage:
    return OutboxMessage(
        event_id=f"probe-{n}", job_id="probe", exchange="", routing_key="jobtrail.work.probe.sync",
        body=b"{}", headers={}, priority=0, created_at=datetime.now(UTC),
    )  # fmt: skip


async def test_a_publish_while_the_broker_is_down_raises_publish_failed(
    private_rabbit: PrivateRabbit,
) -> None:
    publisher = RabbitPublisher(private_rabbit.url)
    await publisher.connect()
    try:
        await publisher.publish(_outbox_message(1))
        await asyncio.to_thread(private_rabbit.stop)
        try:
            with pytest.raises(PublishFailed):
                await publisher.publish(_outbox_message(2))
        finally:
            await asyncio.to_thread(private_rabbit.start)
    finally:
        await publisher.close()
    left = await asyncio.to_thread(drain, private_rabbit.url, "jobtrail.work.probe.sync")
    assert [m.message_id for m in left] == ["probe-1"]

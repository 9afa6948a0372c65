"""The log's database or the SQL database goes away mid-stream, then comes back.

Private server instances only (scripts/private_servers.py): the machine-wide PostgreSQL and
RabbitMQ that other tests use are never stopped. During the outage the tracker must stay up,
hold every message unacknowledged, back off, and say ``degraded`` on /healthz; afterwards it
catches up with nothing lost or doubled.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from scripts.private_servers import PrivatePostgres, PrivateSecantus
from tests import servers
from tests.e2e.harness import wait_for
from tests.faults.conftest import (
    SCALE,
    FaultTracker,
    held,
    make_env,
    partitions_idle,
    quarantined,
    queue_depths,
    rng,
    settle,
    write_artifact,
)
from tests.faults.test_kill_storm import lifecycle_stream, publish_events

pytestmark = [pytest.mark.faults, pytest.mark.timeout(SCALE.test_timeout)]

STATS_LAG = 6.0
"""Seconds; RabbitMQ samples queue figures every 5 s."""
BACKOFF = re.compile(r'"msg": "store unavailable, retrying in ([0-9.]+)s')


@pytest.fixture(scope="module")
def private_pg() -> Iterator[PrivatePostgres]:
    with PrivatePostgres() as pg:
        yield pg


@pytest.fixture
def private_mongo(tmp_path: Path) -> Iterator[PrivateSecantus]:
    with PrivateSecantus(tmp_path) as secantus:
        yield secantus


@dataclass
class Outage:
    """What to stop and start, and the tracker's stores."""

    name: str
    log_url: str
    sql_url: str
    down: Callable[[], None]
    up: Callable[[], None]


@dataclass
class Observed:
    """What the test saw while the server was down."""

    sent_during: int = 0
    held_in_queues: int = 0
    degraded: dict[str, Any] | None = None
    alive_throughout: bool = True


async def _watch(tracker: FaultTracker, seen: Observed, until: float) -> None:
    """Poll /healthz and the process until ``until`` (monotonic): the outage lasts that long."""
    while time.monotonic() < until:
        seen.alive_throughout &= tracker.alive()
        code, body = await asyncio.to_thread(tracker.healthz)
        if code == 503 and body.get("status") == "degraded" and seen.degraded is None:
            seen.degraded = body
        await asyncio.sleep(0.5)


async def _run(
    tracker: FaultTracker, rabbit_url: str, events: list[Any], outage: Outage
) -> tuple[int, Observed]:
    """Publish a third of the stream, then a third while the server is down, then the rest.

    Publishing stops ``STATS_LAG`` seconds before the server returns: RabbitMQ's queue figures
    are samples that old, and they must show every message sent during the outage still held.
    """
    seen = Observed()
    thirds = [events[: len(events) // 3], events[len(events) // 3 : 2 * len(events) // 3]]
    lead = min(SCALE.outage_seconds, 3.0)
    sent = await publish_events(rabbit_url, thirds[0], per_second=len(thirds[0]) / lead)
    await asyncio.to_thread(outage.down)
    until = time.monotonic() + SCALE.outage_seconds
    watching = asyncio.create_task(_watch(tracker, seen, until))
    rate = len(thirds[1]) / (SCALE.outage_seconds - STATS_LAG)
    seen.sent_during = await publish_events(rabbit_url, thirds[1], per_second=rate)
    await asyncio.sleep(max(STATS_LAG, until - time.monotonic()))
    await watching
    seen.held_in_queues = held(await asyncio.to_thread(queue_depths, rabbit_url))
    await asyncio.to_thread(outage.up)
    sent += seen.sent_during
    rest = events[2 * len(events) // 3 :]
    return sent + await publish_events(rabbit_url, rest, per_second=len(rest) / lead), seen


def _outage_case(request: pytest.FixtureRequest, which: str) -> Iterator[Outage]:
    tag = uuid.uuid4().hex[:8]
    if which == "log-secantus":
        mongo: PrivateSecantus = request.getfixturevalue("private_mongo")
        with servers.pg_database() as sql_url:
            down = lambda: mongo.stop(signal.SIGKILL)  # noqa: E731 - a crash, not a shutdown
            yield Outage(which, mongo.url(f"jt_{tag}"), sql_url, down, mongo.start)
        return
    pg: PrivatePostgres = request.getfixturevalue("private_pg")
    private_url = pg.create_database(f"jt_{tag}")
    with servers.pg_database() as shared_url:
        log_url, sql_url = (
            (private_url, shared_url) if which == "log-postgres" else (shared_url, private_url)
        )
        yield Outage(which, log_url, sql_url, pg.stop, pg.start)


# The SQL event log's outage runs in the full form only (the short form stays within budget).
CASES = ["log-secantus", "projections-postgres"] + (
    ["log-postgres"] if SCALE.name == "full" else []
)


@pytest.fixture(params=CASES)
def outage(request: pytest.FixtureRequest) -> Iterator[Outage]:
    yield from _outage_case(request, request.param)


def _figures(tracker: FaultTracker, rabbit_url: str, sent: int, seen: Observed) -> dict[str, Any]:
    delays = [float(d) for d in BACKOFF.findall(tracker.all_logs())]
    return {
        "messages_sent": sent,
        "sent_during_outage": seen.sent_during,
        "held_in_queues_at_outage_end": seen.held_in_queues,
        "quarantined": quarantined(rabbit_url),
        "store_retries": len(delays),
        "backoff_seconds": delays,
        "crashes": tracker.crashes() + (not seen.alive_throughout),
        "tracebacks": tracker.tracebacks()["app"],
    }


ZERO = ("lost", "duplicated", "gaps", "mismatched", "outbox_pending", "unsettled_jobs",
        "anomalies", "quarantined", "crashes", "tracebacks")  # fmt: skip


def test_store_outage_holds_messages_and_catches_up(
    outage: Outage,
    rabbit_url: str,
    fault_tracker: Callable[[dict[str, str]], FaultTracker],
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    stream = lifecycle_stream(
        SCALE.outage_events, f"outage-{uuid.uuid4().hex[:6]}", rng(f"outage-{outage.name}")
    )
    tracker = fault_tracker(make_env(rabbit_url, outage.log_url, outage.sql_url, tmp_path))
    tracker.start()
    sent, seen = asyncio.run(_run(tracker, rabbit_url, stream.events, outage))
    idle = lambda: partitions_idle(queue_depths(rabbit_url))  # noqa: E731
    census, counts = settle(tracker.env, stream.event_ids, idle, stream.unsettled)
    healthy = wait_for(lambda: tracker.healthz()[0] == 200, "/healthz to be ok again", 60)
    counts |= _figures(tracker, rabbit_url, sent, seen)
    assert tracker.stop() == 0
    write_artifact(f"outage_{outage.name}", counts, started,
                   outage_seconds=SCALE.outage_seconds, degraded_healthz=seen.degraded,
                   unsettled=census.describe(stream.unsettled(census)))  # fmt: skip
    assert {k: counts[k] for k in ZERO} == dict.fromkeys(ZERO, 0), (
        counts,
        tracker.all_logs()[-3000:],
    )
    assert seen.degraded is not None, "/healthz never said degraded during the outage"
    assert 0 < seen.sent_during <= seen.held_in_queues  # nothing sent during the outage was acked
    delays = counts["backoff_seconds"]
    assert delays and delays == sorted(delays), delays  # it backed off, exponentially
    assert healthy

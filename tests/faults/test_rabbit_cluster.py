"""A RabbitMQ cluster of three private nodes; one node is SIGKILLed mid-load and restarted.

Three private nodes on loopback (``PrivateRabbitCluster``: own names, ports, data, one shared
Erlang cookie, ``rabbitmqctl join_cluster``) form one cluster before any tracker starts, so
Jobtrail's quorum queues (the partitions, ``jobtrail.unrouted``, ``jobtrail.broker-dead``) get a
replica on each node: the tracker declares them without ``x-quorum-initial-group-size``, which
then defaults to the cluster's size. Neither aio-pika nor FastStream takes a list of broker
URLs, so each of three trackers (sharing the partitions and a PostgreSQL log and projections)
connects to a node of its own: node n serves tracker n. Producers publish through node 0.

Mid-stream one of the other two nodes is SIGKILLed (its tracker loses its broker, the queue
leaders it held move to the survivors), stays down a while, and is started again on its data.
After that: every event in the log exactly once, seq gapless, each job's events recorded in the
order its producer sent them, every job in its expected final state, projection = fold,
``verify`` 0. Full form only (``make test-faults``): the cluster alone takes about a minute to
form on a busy 2-core machine and three extra Erlang VMs would slow every other test.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import servers
from tests.e2e.harness import cli, wait_for
from tests.faults.conftest import (
    SCALE,
    Census,
    FaultTracker,
    PrivateRabbitCluster,
    partitions_idle,
    quarantined,
    republish_check,
    rng,
    settle,
    write_artifact,
)
from tests.faults.test_kill_storm import Progress, Stream, lifecycle_stream, publish_events
from tests.faults.trackers import (
    EVERY_RUN_ZERO,
    MARKS,
    assert_zero,
    build_trackers,
    process_counts,
    start_all,
)

pytestmark = [
    *MARKS,
    pytest.mark.skipif(SCALE.name != "full", reason="full form only (make test-faults)"),
]

EVENTS = 10_000
RATE = 150.0
DOWN_SECONDS = 15.0
REPLICATED = ("jobtrail.tracker.", "jobtrail.unrouted")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRabbitCluster]:
    with PrivateRabbitCluster(tmp_path_factory.mktemp("cluster")) as nodes:
        yield nodes


def out_of_order(census: Census, stream: Stream) -> list[str]:
    """Jobs whose producer events are not recorded (in seq order) in the order they were sent."""
    sent: dict[str, list[str]] = {}
    for event in stream.events:
        ids = sent.setdefault(event.job_id, [])
        if str(event.event_id) not in ids:
            ids.append(str(event.event_id))
    wrong = []
    for job_id, ids in sent.items():
        wanted = set(ids)
        recorded = [e for e, _, _, _ in census.sources.get(job_id, []) if e in wanted]
        if recorded != ids:
            wrong.append(job_id)
    return wrong


def replicas(cluster: PrivateRabbitCluster) -> dict[str, int]:
    """Replica count of each of Jobtrail's replicated queues (the partitions, unrouted)."""
    members = cluster.quorum_members()
    return {q: n for q, n in members.items() if q.startswith(REPLICATED)}


async def _load(
    cluster: PrivateRabbitCluster, victim: int, stream: Stream
) -> tuple[int, list[str]]:
    """Publish the stream through node 0; at a third of it SIGKILL node ``victim``, bring it
    back ``DOWN_SECONDS`` later (in the background); returns messages sent and the moments."""
    progress = Progress()
    publishing = asyncio.create_task(
        publish_events(cluster.nodes[0].url, stream.events, progress=progress, per_second=RATE)
    )
    await progress.reach(len(stream.events) // 3, publishing)
    await asyncio.to_thread(cluster.kill, victim)
    moments = [f"killed at {progress.sent} sent, {time.strftime('%H:%M:%S')}"]
    await asyncio.sleep(DOWN_SECONDS)
    await asyncio.to_thread(cluster.restart, victim)
    moments.append(f"back at {progress.sent} sent, {time.strftime('%H:%M:%S')}")
    return await publishing, moments


MUST_BE_ZERO = (*EVERY_RUN_ZERO, "out_of_order")


def test_a_node_of_the_cluster_killed_mid_load_loses_nothing(
    cluster: PrivateRabbitCluster,
    fault_tracker: Callable[[dict[str, str]], FaultTracker],
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    chooser = rng("rabbit_cluster")
    stream = lifecycle_stream(EVENTS, f"cluster-{uuid.uuid4().hex[:6]}", chooser)
    victim = chooser.choice([1, 2])  # producers publish through node 0
    with servers.pg_database() as log_url, servers.pg_database() as sql_url:
        urls = [node.url for node in cluster.nodes]  # node n serves tracker n
        trackers = build_trackers(fault_tracker, tmp_path, urls, log_url, sql_url)
        start_all(trackers)
        placed = wait_for(lambda: (r := replicas(cluster)) and len(r) >= 5 and r,
                          "the partition queues declared", 60)  # fmt: skip
        sent, moments = asyncio.run(_load(cluster, victim, stream))
        idle = lambda: partitions_idle(cluster.nodes[0].queues())  # noqa: E731
        census, counts = settle(trackers[0].env, stream.event_ids, idle, stream.unsettled)
        reordered = out_of_order(census, stream)
        counts |= republish_check(cluster.nodes[0].url, census)
        counts |= {"quarantined": quarantined(cluster.nodes[0].url)}
        verify_code, verify_out = cli(trackers[0].env, "verify")
        after = replicas(cluster)
        stopped = [t.stop() for t in trackers]
    counts |= process_counts(trackers, stopped) | {
        "messages_sent": sent,
        "out_of_order": len(reordered),
        "verify_exit": verify_code,
    }
    write_artifact("rabbit_cluster", counts, started, nodes=len(cluster.nodes),
                   killed_node=victim, down_seconds=DOWN_SECONDS, moments=moments,
                   replicas_before=placed, replicas_after=after, event_types=dict(census.types),
                   out_of_order=census.describe(reordered),
                   unsettled=census.describe(stream.unsettled(census)))  # fmt: skip
    assert set(placed.values()) == {len(cluster.nodes)}, placed  # replicated on every node
    assert_zero(counts, MUST_BE_ZERO, verify_out[-2000:])
    assert counts["jobs"] == len(stream.expected)

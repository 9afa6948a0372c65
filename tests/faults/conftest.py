"""The fault-injection suite's plumbing: sizes, a killable tracker, the census of the log, artifacts.

Sizes come from ``JOBTRAIL_FAULTS_SCALE``: ``short`` (the default, part of every test run) or
``full`` (``make test-faults``). ``JOBTRAIL_FAULTS_SEED`` replays a run's random choices.
Every scenario writes its figures to ``test-artifacts/reliability/<scenario>.json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import pytest

from app.adapters.log_factory import open_event_log
from app.adapters.sql_store import SqlProjectionStore
from app.domain.events import DeadLettered, Redriven, Rerouted, Retried
from app.domain.policy import Policy
from app.domain.state import JobState
from app.services.projection import job_row
from app.services.tracking import fold_history
from scripts.private_servers import PrivateRabbit, wait_until
from tests.e2e.harness import ROOT, TEST_POLICY, Tracker, wait_for
from tests.servers import queue_depths as queue_depths  # the suite's modules take it from here

ARTIFACTS = ROOT / "test-artifacts" / "reliability"
AMQP_LOGGERS = ("aiormq.", "aio_pika.")
AIO_PIKA_AT_EXIT = "Exception ignored in: <coroutine object OneShotCallback."
MARKER = "faults: fault-injection and fuzzing suite (JOBTRAIL_FAULTS_SCALE=full for the full form)"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER)


@dataclass(frozen=True)
class Scale:
    """How big each scenario is."""

    name: str
    kills: int
    storm_events: int
    outage_seconds: float
    outage_events: int
    broker_events: int
    broker_down_seconds: float
    fuzz_inputs: int
    fuzz_valid_jobs: int

    @property
    def test_timeout(self) -> int:
        return 300 if self.name == "short" else 3600


SCALES = {
    "short": Scale("short", 3, 3_000, 8.0, 600, 2_000, 5.0, 1_000, 40),
    "full": Scale("full", 20, 100_000, 30.0, 3_000, 20_000, 20.0, 10_000, 400),
}


def current_scale() -> Scale:
    name = os.environ.get("JOBTRAIL_FAULTS_SCALE", "short")
    if name not in SCALES:
        raise pytest.UsageError(f"JOBTRAIL_FAULTS_SCALE must be one of {sorted(SCALES)}")
    return SCALES[name]


SCALE = current_scale()
SEED = int(os.environ.get("JOBTRAIL_FAULTS_SEED", str(random.SystemRandom().randrange(10**6))))


def rng(scenario: str) -> random.Random:
    """A random generator per scenario, fixed by the run's seed (printed in every artifact)."""
    return random.Random(f"{SEED}:{scenario}")


class FaultTracker(Tracker):
    """A tracker process that counts kills, unexpected exits and tracebacks, and knows its API."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        super().__init__(env, workdir)
        self.kills = 0
        self.unexpected_exits = 0

    def spawn(self) -> None:
        """Start the process without waiting for it to serve (to kill it while it starts)."""
        self.starts += 1
        self._log = self.workdir / f"tracker-{self.starts}.log"
        with self._log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "app", "serve"],
                cwd=self.workdir,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if not self.alive():
            self.unexpected_exits += 1
            return
        super().kill()
        self.kills += 1

    def stop(self) -> int:
        """SIGTERM and wait; an exit before that (other than our SIGKILL) counts as a crash."""
        if self.proc is not None and self.proc.poll() not in (None, -9):
            self.unexpected_exits += 1
        code = super().stop()
        self.proc = None
        return code

    def all_logs(self) -> str:
        return "\n".join(
            p.read_text(errors="replace") for p in sorted(self.workdir.glob("tracker-*.log"))
        )

    def tracebacks(self) -> Counter[str]:
        """Tracebacks in the logs, by kind: ``app`` (Jobtrail's own: a bug), ``amqp_library``
        (aiormq / aio-pika reporting a connection the broker closed) and ``handler_cancelled``
        (FastStream logging each in-flight handler it cancels when the broker connection goes,
        at ERROR level: noisy, but the messages stay unacknowledged and come back)."""
        kinds: Counter[str] = Counter()
        previous = ""
        for line in self.all_logs().splitlines():
            previous, before = line, previous
            if "Traceback (most recent call last)" not in line:
                continue
            try:
                record = json.loads(line)
            except ValueError:  # not a log record: an uncaught exception on stderr
                # aio-pika's robust connection leaves a callback coroutine that is collected
                # after the event loop closed, once the tracker has stopped ("Exception ignored
                # in: <coroutine object OneShotCallback...>": seen once, after "jobtrail stopped").
                kinds["amqp_library" if before.startswith(AIO_PIKA_AT_EXIT) else "app"] += 1
                continue
            last = str(record.get("exc", "")).strip().rsplit("\n", 1)[-1]
            if str(record.get("logger", "")).startswith(AMQP_LOGGERS):
                kinds["amqp_library"] += 1
            elif last.startswith("asyncio.exceptions.CancelledError"):
                kinds["handler_cancelled"] += 1
            else:
                kinds["app"] += 1
        return kinds

    def crashes(self) -> int:
        """Exits we did not cause (the current process included, if it died on its own)."""
        running_died = self.proc is not None and self.proc.poll() not in (None, -9)
        return self.unexpected_exits + running_died

    def api_url(self) -> str:
        match = re.search(r'"msg": "jobtrail api listening".*?"url": "([^"]+)"', self.log_text())
        assert match, f"no 'jobtrail api listening' line:\n{self.log_text()[-2000:]}"
        return match.group(1)

    def healthz(self) -> tuple[int, dict[str, Any]]:
        response = httpx.get(self.api_url() + "/healthz", timeout=15)
        return response.status_code, response.json()


def make_env(rabbit_url: str, log_url: str, sql_url: str, workdir: Path) -> dict[str, str]:
    """A tracker environment (the e2e harness's, with the suite's own policy file)."""
    from tests.e2e.harness import tracker_env

    return tracker_env(rabbit_url, log_url, sql_url, workdir)


@pytest.fixture
def fault_tracker(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], FaultTracker]]:
    """Build trackers for a test; each is stopped (and asserted alive) at the end."""
    made: list[FaultTracker] = []

    def build(env: dict[str, str]) -> FaultTracker:
        workdir = tmp_path / f"tracker-{len(made)}"
        workdir.mkdir()
        made.append(FaultTracker(env, workdir))
        return made[-1]

    yield build
    for tracker in made:
        tracker.stop()


# -- the census: what the log and the projections hold -------------------------------------------


@dataclass
class Census:
    """One pass over the whole log, folded per job, compared with the projections."""

    copies: Counter[str] = field(default_factory=Counter)
    states: dict[str, JobState] = field(default_factory=dict)
    gaps: int = 0
    republishes: list[tuple[str, str, str]] = field(default_factory=list)
    """(job_id, event_id, queue) of every recorded event the outbox must publish."""
    types: Counter[str] = field(default_factory=Counter)
    sources: dict[str, list[tuple[str, str, str, datetime]]] = field(default_factory=dict)
    """job_id → (event_id, source, type, recorded_at) of each recorded event, in seq order."""
    lag: timedelta = timedelta(0)
    """The longest a producer's event waited to be recorded (recorded_at - occurred_at): lag,
    which is never an anomaly; only an occurred_at ahead of recorded_at is ``clock_skew``."""

    def describe(self, jobs: list[str], limit: int = 10) -> list[dict[str, Any]]:
        """What the log says about ``jobs`` (for the artifact, when something is wrong)."""
        described = []
        for job_id in jobs[:limit]:
            state = self.states.get(job_id)
            described.append({
                "job_id": job_id,
                "history": [f"{t}/{s} at {at:%H:%M:%S.%f}"
                            for _, s, t, at in self.sources.get(job_id, [])],
                "state": state and (state.status, state.attempt, state.pool),
                "anomalies": state and [f"{a.kind}: {a.detail}" for a in state.anomalies],
            })  # fmt: skip
        return described

    def anomalies(self, kind: str | None = None) -> int:
        return sum(1 for s in self.states.values() for a in s.anomalies if kind in (None, a.kind))


async def take_census(env: dict[str, str], *, compare: bool = True) -> tuple[Census, int, int]:
    """The census of the log, how many jobs' projection rows differ from the fold, and whether
    outbox rows are still unpublished (0 or 1)."""
    log = open_event_log(env["JOBTRAIL_LOG_URL"])
    store = SqlProjectionStore(env["JOBTRAIL_SQL_URL"])
    policy = Policy.from_toml(TEST_POLICY)
    census = Census()
    by_job: dict[str, list[Any]] = {}
    try:
        async for recorded in log.scan():
            event = recorded.event
            census.copies[str(event.event_id)] += 1
            census.types[event.type] += 1
            by_job.setdefault(recorded.job_id, []).append(recorded)
            census.sources.setdefault(recorded.job_id, []).append(
                (str(event.event_id), event.source, event.type, recorded.recorded_at)
            )
            if event.source != "jobtrail":
                census.lag = max(census.lag, recorded.recorded_at - event.occurred_at)
            if isinstance(event, Retried | Rerouted | Redriven):
                census.republishes.append((event.job_id, str(event.event_id), event.queue))
            elif isinstance(event, DeadLettered):
                census.republishes.append((event.job_id, str(event.event_id), "jobtrail.dead"))
        mismatched = pending = 0
        for job_id, events in by_job.items():
            census.gaps += [e.seq for e in events] != list(range(1, len(events) + 1))
            census.states[job_id] = state = fold_history(events, policy)
            if compare:
                mismatched += await store.get_job(job_id) != job_row(state, policy)
        if compare:
            pending = len(await store.pending_outbox(1))
        return census, mismatched, pending
    finally:
        await log.close()
        await store.close()


Expectation = Callable[[Census], list[str]]


def settle(
    env: dict[str, str],
    published: set[str],
    idle: Callable[[], bool],
    expect: Expectation,
    *,
    timeout: float = 240,
    outbox: bool = True,
    patience: float = 60,
) -> tuple[Census, dict[str, Any]]:
    """Wait (bounded) until every published event is recorded, ``expect`` (the jobs not yet in
    their final state) is empty, the partitions are idle, the projection equals the fold and
    (``outbox``) the outbox is drained; then count. A timed-out wait is reported by the counts."""

    def recorded() -> bool:
        census, _, _ = asyncio.run(take_census(env, compare=False))
        return not published - census.copies.keys() and not expect(census)

    last: list[tuple[Census, int, int]] = []

    def consistent() -> bool:
        last[:] = [asyncio.run(take_census(env))]
        _, mismatched, pending = last[0]
        return mismatched == 0 and (pending == 0 or not outbox)

    for check, seconds in ((recorded, timeout), (idle, 120), (consistent, patience)):
        with contextlib.suppress(AssertionError):
            wait_for(check, check.__name__, seconds)
    census, mismatched, pending = last[0] if last else asyncio.run(take_census(env))
    return census, _counts(census, published, expect, mismatched, pending)


def _counts(
    census: Census, published: set[str], expect: Expectation, mismatched: int, pending: int
) -> dict[str, Any]:
    return {
        "published": len(published),
        "lost": len(published - census.copies.keys()),
        "duplicated": sum(1 for n in census.copies.values() if n > 1),
        "gaps": census.gaps,
        "mismatched": mismatched,
        "outbox_pending": pending,
        "unsettled_jobs": len(expect(census)),
        "anomalies": census.anomalies(),
        "jobs": len(census.states),
        "recorded_events": sum(census.copies.values()),
    }


# -- RabbitMQ probes --------------------------------------------------------------------------------


def held(depths: dict[str, tuple[int, int]]) -> int:
    """Messages in the partition queues and in ``jobtrail.unrouted`` (ready or unacknowledged)."""
    return sum(
        r + u
        for name, (r, u) in depths.items()
        if name.startswith("jobtrail.tracker.") or name == "jobtrail.unrouted"
    )


def partitions_idle(depths: dict[str, tuple[int, int]]) -> bool:
    """Every partition queue exists, is empty and has nothing unacknowledged."""
    return any(n.startswith("jobtrail.tracker.") for n in depths) and held(depths) == 0


async def _drain(
    rabbit_url: str, queue: str, limit: int
) -> list[aio_pika.abc.AbstractIncomingMessage]:
    conn = await aio_pika.connect_robust(rabbit_url)
    try:
        channel = await conn.channel()
        await channel.set_qos(prefetch_count=1000)
        try:
            q = await channel.declare_queue(queue, passive=True)
        except aio_pika.exceptions.ChannelNotFoundEntity:
            return []  # nothing was ever published to it
        got: list[aio_pika.abc.AbstractIncomingMessage] = []
        while len(got) < limit:
            message = await q.get(fail=False, no_ack=True)
            if message is None:
                break
            got.append(message)
        return got
    finally:
        await conn.close()


def drain(
    rabbit_url: str, queue: str, limit: int = 200_000
) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Take (and ack) every message now in ``queue`` (none if it does not exist)."""
    return asyncio.run(_drain(rabbit_url, queue, limit))


def quarantined(rabbit_url: str) -> int:
    """How many messages ``jobtrail.quarantine`` holds (taking them): none for a valid stream,
    and a message dead-lettered by the partition queues' delivery limit lands there too."""
    return len(drain(rabbit_url, "jobtrail.quarantine"))


def republish_check(rabbit_url: str, census: Census, jobs: str = "") -> dict[str, int]:
    """Every republish and dead letter the log owes (for jobs starting with ``jobs``) is in its
    queue, at least once (the outbox publishes at least once, with confirms)."""
    owing = [(e, q) for j, e, q in census.republishes if j.startswith(jobs)]
    owed = Counter(event_id for event_id, _ in owing)
    seen: Counter[str] = Counter()
    for queue in sorted({q for _, q in owing}):
        for message in drain(rabbit_url, queue):
            seen[str((message.headers or {}).get("x-jobtrail-event-id"))] += 1
    return {
        "republishes_owed": len(owed),
        "republishes_missing": sum(1 for e in owed if seen[e] == 0),
        "republishes_repeated": sum(1 for e in owed if seen[e] > 1),
    }


# -- artifacts ---------------------------------------------------------------------------------------


def write_artifact(scenario: str, counts: dict[str, Any], started: float, **extra: Any) -> None:
    """Record a scenario's figures for docs/reliability.md (the last run wins)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    record = {
        "scenario": scenario,
        "scale": asdict(SCALE),
        "seed": SEED,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": round(time.monotonic() - started, 1),
        "python": sys.version.split()[0],
        "counts": counts,
        **extra,
    }
    (ARTIFACTS / f"{scenario}.json").write_text(json.dumps(record, indent=2, default=str) + "\n")


# -- a RabbitMQ cluster of private nodes ----------------------------------------------------------


class PrivateRabbitCluster:
    """Private RabbitMQ nodes on loopback joined in one cluster (``rabbitmqctl join_cluster``).

    Each node is a ``PrivateRabbit`` (own node name, AMQP and distribution ports, data dir,
    ``HOME``) and all share one Erlang cookie, written to each ``HOME`` before the first boot.
    The first node founds the cluster; the others join it. Jobtrail's quorum queues declared
    after that have a replica on every node (their initial group size defaults to the cluster).
    """

    def __init__(self, base: Path, size: int = 3) -> None:
        self.nodes = [PrivateRabbit(base / f"node-{n}") for n in range(size)]
        self._cookie = uuid.uuid4().hex.upper()

    def __enter__(self) -> PrivateRabbitCluster:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Boot every node (the first alone, then each joins it); waits until all run."""
        for node in self.nodes:
            home = node.base / "home"
            home.mkdir(parents=True, exist_ok=True)
            cookie = home / ".erlang.cookie"
            cookie.write_text(self._cookie)
            cookie.chmod(0o400)
        self.nodes[0].start()
        for node in self.nodes[1:]:
            node.start()
            node.ctl("stop_app")
            node.ctl("join_cluster", self.nodes[0].node)
            node.ctl("start_app")
        wait_until(lambda: len(self.running()) == len(self.nodes), "every node running", 120)

    def running(self, via: int = 0) -> list[str]:
        """The nodes the cluster sees running (asked of node ``via``)."""
        status = json.loads(self.nodes[via].ctl("cluster_status", "--formatter", "json"))
        return sorted(status.get("running_nodes", []))

    def kill(self, index: int) -> None:
        """SIGKILL node ``index`` (its whole process group, started by PrivateRabbit): a crash."""
        proc = self.nodes[index].proc
        assert proc is not None and proc.poll() is None, f"node {index} is not running"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def restart(self, index: int) -> None:
        """Start node ``index`` again on its data: it rejoins the cluster by itself."""
        self.nodes[index].start()
        wait_until(lambda: len(self.running()) == len(self.nodes), "the node back in", 120)

    def quorum_members(self, via: int = 0) -> dict[str, int]:
        """Quorum queue name → how many nodes hold a replica of it."""
        out = self.nodes[via].ctl("list_queues", "--formatter", "json",
                                  "name", "type", "members")  # fmt: skip
        return {q["name"]: len(q["members"]) for q in json.loads(out) if q["type"] == "quorum"}

    def close(self) -> None:
        """Stop every node still running and delete its data."""
        for node in reversed(self.nodes):
            with contextlib.suppress(Exception):
                node.close()

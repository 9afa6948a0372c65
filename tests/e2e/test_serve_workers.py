"""``jobtrail serve --workers 2``: one command, two trackers sharing the partitions. A killed
worker is replaced and the partitions are shared again; SIGTERM stops every worker; SQLite and
bad values are refused in one line."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests import servers
from tests.e2e.harness import tracker_env, wait_for
from tests.e2e.test_cli_errors import jobtrail
from tests.e2e.test_crash_and_integrity import _publish_all, _stream, settled_counts

pytestmark = pytest.mark.timeout(400)
PARTITIONS = [0, 1, 2, 3]


class Supervised:
    """A ``jobtrail serve --workers N`` process, its log (JSON lines) in a file."""

    def __init__(self, env: dict[str, str], workdir: Path, workers: int) -> None:
        self.env = env
        self.log = workdir / "serve.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "app", "serve", "--workers", str(workers)],
                cwd=workdir,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def lines(self) -> list[dict[str, Any]]:
        text = self.log.read_text(errors="replace")
        return [json.loads(line) for line in text.splitlines() if line.startswith("{")]

    def workers(self) -> dict[int, int]:
        """The pid of each worker (by index) the supervisor started last."""
        assert self.proc.poll() is None, self.log.read_text(errors="replace")[-3000:]
        started = [line for line in self.lines() if line["msg"] == "jobtrail worker started"]
        return {line["worker"]: line["pid"] for line in started}

    def when(self, wanted: Callable[[dict[int, int]], bool]) -> dict[int, int] | None:
        workers = self.workers()
        return workers if wanted(workers) else None

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                raise
        return self.proc.returncode


def _live_members(sql_url: str) -> list[str]:
    """The trackers whose heartbeat has not expired (table ``trackers``)."""

    async def query() -> list[str]:
        engine = create_async_engine(sql_url)
        try:
            async with engine.connect() as conn:
                rows = await conn.execute(
                    text(
                        "SELECT member FROM trackers "
                        "WHERE expires >= extract(epoch FROM clock_timestamp())"
                    )
                )
                return sorted(rows.scalars())
        finally:
            await engine.dispose()

    return asyncio.run(query())


def _member_pid(name: str) -> int:
    return int(name.split("-")[-2])  # "<host>-<pid>-<random>"


def _owners(rabbit_url: str) -> dict[int, list[int]]:
    """The partitions each process (by pid) consumes as the active consumer."""
    owners: dict[int, list[int]] = {}
    for queue, names in servers.active_consumers(rabbit_url).items():
        if queue.startswith("jobtrail.tracker."):
            assert len(names) == 1, f"{queue} has {len(names)} active consumers: {names}"
            # Connection names read "jobtrail <host>-<pid>-<random> partition <n>".
            pid = _member_pid(names[0].split()[1])
            owners.setdefault(pid, []).append(int(queue.rsplit(".", 1)[1]))
    return {pid: sorted(parts) for pid, parts in owners.items()}


def _shared_by(rabbit_url: str, sql_url: str, pids: set[int]) -> dict[int, list[int]] | None:
    """Who consumes what, once exactly ``pids`` are the live members and consume every
    partition between them; None before."""
    if {_member_pid(m) for m in _live_members(sql_url)} != pids:
        return None
    owners = _owners(rabbit_url)
    every = sorted(p for parts in owners.values() for p in parts)
    return owners if set(owners) == pids and every == PARTITIONS else None


def test_two_workers_share_the_partitions_and_a_killed_one_is_replaced(
    mongo_url: str, pg_url: str, rabbit_url: str, tmp_path: Path
) -> None:
    env = tracker_env(rabbit_url, mongo_url, pg_url, tmp_path) | {"JOBTRAIL_MEMBER_TTL_S": "2"}
    del env["JOBTRAIL_WORKERS"]  # the option says how many
    events = _stream(200)
    published = {str(e.event_id) for e in events}
    half = len(events) // 2
    serve = Supervised(env, tmp_path, workers=2)
    try:
        first = wait_for(lambda: serve.when(lambda w: len(w) == 2), "2 workers")
        shared = wait_for(
            lambda: _shared_by(rabbit_url, pg_url, set(first.values())),
            "both workers to join and share the partitions",
            timeout=120,
        )
        _publish_all(rabbit_url, events[:half])
        os.kill(first[1], signal.SIGKILL)
        replaced = wait_for(lambda: serve.when(lambda w: w[1] != first[1]), "a new worker 1", 60)
        reshared = wait_for(
            lambda: _shared_by(rabbit_url, pg_url, set(replaced.values())),
            "the new worker to join and the partitions to be shared again",
            timeout=120,
        )
        _publish_all(rabbit_url, events[half:])
        counts = settled_counts(env, published, rabbit_url)
    finally:
        code = serve.stop()
    assert code == 0, serve.log.read_text(errors="replace")[-3000:]
    assert sorted(len(parts) for parts in shared.values()) == [2, 2], shared
    assert replaced[2] == first[2] and set(reshared) == {replaced[1], first[2]}, reshared
    assert sorted(len(parts) for parts in reshared.values()) == [2, 2], reshared
    assert counts == {
        "lost": 0,
        "duplicated": 0,
        "gaps": 0,
        "mismatched": 0,
        "anomalies": 0,
        "jobs": 200,
    }
    lines = serve.lines()
    (died,) = [line for line in lines if line["msg"].startswith("jobtrail worker exited")]
    assert died["worker"] == 1 and died["exit"] == "signal SIGKILL", died
    serving = [(line["worker"], line["pid"]) for line in lines if line["msg"] == "jobtrail serving"]
    assert sorted(serving) == sorted([(1, first[1]), (1, replaced[1]), (2, first[2])])


def test_sigterm_stops_every_worker_and_the_supervisor_exits_0(
    mongo_url: str, pg_url: str, rabbit_url: str, tmp_path: Path
) -> None:
    env = tracker_env(rabbit_url, mongo_url, pg_url, tmp_path) | {"JOBTRAIL_WORKERS": "2"}
    serve = Supervised(env, tmp_path, workers=2)
    try:
        pids = wait_for(lambda: serve.when(lambda w: len(w) == 2), "2 workers")
        wait_for(
            lambda: _shared_by(rabbit_url, pg_url, set(pids.values())),
            "both workers to share the partitions",
            timeout=120,
        )
        serve.proc.send_signal(signal.SIGTERM)
        code = serve.proc.wait(timeout=90)  # bounded: the grace period is 30 s
    finally:
        serve.stop()
    assert code == 0, serve.log.read_text(errors="replace")[-3000:]
    assert [pid for pid in pids.values() if Path(f"/proc/{pid}").exists()] == []
    assert _live_members(pg_url) == []  # each worker left the membership as it stopped
    lines = serve.lines()
    stopped = sorted(line["worker"] for line in lines if line["msg"] == "jobtrail stopped")
    assert stopped == [1, 2]
    assert [line["msg"] for line in lines[-3:]] == [
        "jobtrail worker stopped",
        "jobtrail worker stopped",
        "jobtrail workers stopped",
    ]


def _sqlite(tmp_path: Path) -> dict[str, str]:
    return {
        "JOBTRAIL_SQL_URL": f"sqlite+aiosqlite:///{tmp_path}/p.db",
        "JOBTRAIL_LOG_URL": f"sqlite+aiosqlite:///{tmp_path}/l.db",
        "JOBTRAIL_HTTP_PORT": "0",
    }


@pytest.mark.parametrize(
    ("args", "env"), [(("--workers", "2"), {}), ((), {"JOBTRAIL_WORKERS": "2"})]
)
def test_several_workers_on_sqlite_are_refused_in_one_line(
    args: tuple[str, ...], env: dict[str, str], tmp_path: Path
) -> None:
    result = jobtrail("serve", *args, cwd=tmp_path, **(_sqlite(tmp_path) | env))
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("jobtrail: 2 workers need stores that take several writers")
    assert "SQLite (one writer) holds the event log and the projections" in line


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (("--workers", "0"), {}, "jobtrail: Invalid value for '--workers': 0 is not in the range"),
        (("--workers", "-1"), {}, "jobtrail: Invalid value for '--workers': -1 is not in the"),
        (("--workers", "x"), {}, "jobtrail: Invalid value for '--workers': 'x' is not a valid"),
        ((), {"JOBTRAIL_WORKERS": "0"}, "jobtrail: invalid setting JOBTRAIL_WORKERS: Input should"),
        ((), {"JOBTRAIL_WORKERS": "x"}, "jobtrail: invalid setting JOBTRAIL_WORKERS: Input should"),
    ],
)
def test_bad_worker_counts_get_one_line_and_exit_2(
    args: tuple[str, ...], env: dict[str, str], message: str, tmp_path: Path
) -> None:
    result = jobtrail("serve", *args, cwd=tmp_path, **(_sqlite(tmp_path) | env))
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(message), line

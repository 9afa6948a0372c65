"""Run the real tracker as a process and drive it through RabbitMQ and the CLI only."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aio_pika
import aiormq
from typer.testing import CliRunner

from app.client import JobtrailClient
from app.entrypoints.cli import app as cli_app

ROOT = Path(__file__).resolve().parents[2]

TEST_POLICY = """
jitter = 0.2
[defaults]
max_attempts = 3
lease_seconds = 300
ttl_seconds = 3600
[defaults.retry]
initial_interval_seconds = 1.0
backoff_coefficient = 2.0
max_interval_seconds = 5.0
[pools.flaky]
fallback_pools = ["steady"]
reroute_after_failures = 1
"""


class Tracker:
    """A ``jobtrail serve`` process with its own environment and log file."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.env = env
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, timeout: float = 60) -> None:
        self.starts += 1
        logfile = self.workdir / f"tracker-{self.starts}.log"
        self._log = logfile
        with logfile.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "app", "serve"],
                cwd=self.workdir,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "jobtrail serving" in logfile.read_text(errors="replace"):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(
            f"tracker did not start:\n{logfile.read_text(errors='replace')[-4000:]}"
        )

    def log_text(self) -> str:
        return self._log.read_text(errors="replace")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise


RUN_CLI = "import app.entrypoints.api_cli; from app.entrypoints.cli import main; main()"
"""``python -c`` source of the ``jobtrail`` command (its ``api`` subcommand registered)."""


@contextmanager
def api_process(env: dict[str, str], logfile: Path) -> Iterator[str]:
    """``jobtrail api`` as a process with ``env`` (its output in ``logfile``): yields its URL
    once it listens, then stops it with SIGTERM and asserts it exits 0 (killed if it hangs)."""
    with logfile.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", RUN_CLI, "api"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield wait_for_url(logfile, proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, logfile.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def wait_for_url(logfile: Path, proc: subprocess.Popen[bytes]) -> str:
    """The URL a starting ``jobtrail api`` logs it listens on (up to 60 s)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        for line in logfile.read_text(errors="replace").splitlines():
            if '"jobtrail api listening"' in line:
                return str(json.loads(line)["url"])
        time.sleep(0.1)
    raise AssertionError(f"jobtrail api did not start:\n{logfile.read_text()[-3000:]}")


def tracker_env(rabbit_url: str, log_url: str, sql_url: str, workdir: Path) -> dict[str, str]:
    policy = workdir / "policy.toml"
    policy.write_text(TEST_POLICY)
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBTRAIL_")}
    env |= {
        "JOBTRAIL_RABBIT_URL": rabbit_url,
        "JOBTRAIL_LOG_URL": log_url,
        "JOBTRAIL_SQL_URL": sql_url,
        "JOBTRAIL_POLICY_FILE": str(policy),
        "JOBTRAIL_TIMER_INTERVAL_MS": "100",
        "JOBTRAIL_HTTP_PORT": "0",
        "JOBTRAIL_WORKERS": "1",  # one tracker per process, as these tests count them
        "PYTHONPATH": str(ROOT),
    }
    return env


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


def publish(
    rabbit_url: str, *actions: Callable[[JobtrailClient], Coroutine[Any, Any, Any]]
) -> list[Any]:
    async def go() -> list[Any]:
        async with JobtrailClient(rabbit_url, source="cloud") as client:
            return [await action(client) for action in actions]

    return run(go())  # type: ignore[no-any-return]


def cli(env: dict[str, str], *args: str) -> tuple[int, str]:
    """Run a ``jobtrail`` command in-process with the tracker's environment."""
    runner = CliRunner()
    result = runner.invoke(
        cli_app, list(args), env={k: v for k, v in env.items() if k.startswith("JOBTRAIL_")}
    )
    return result.exit_code, result.output


def status(env: dict[str, str], job_id: str) -> dict[str, Any] | None:
    code, out = cli(env, "status", job_id, "--json")
    if code == 2:
        return None
    assert code == 0, out
    return json.loads(out)  # type: ignore[no-any-return]


def history(env: dict[str, str], job_id: str) -> list[dict[str, Any]]:
    code, out = cli(env, "history", job_id, "--json")
    assert code == 0, out
    return json.loads(out)  # type: ignore[no-any-return]


def wait_for(check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def wait_status(
    env: dict[str, str], job_id: str, wanted: str, timeout: float = 30.0
) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        row = status(env, job_id)
        return row if row and row["status"] == wanted else None

    return wait_for(check, f"{job_id} to be {wanted} (now {status(env, job_id)})", timeout)  # type: ignore[no-any-return]


def get_messages(
    rabbit_url: str, queue: str, *, max_count: int = 100, wait: float = 0.5
) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Take (and ack) every message currently in ``queue``; none while nobody declared it yet
    (the relay declares a work queue with its first publish, after the projection committed
    the decision a test may have seen)."""

    async def go() -> list[aio_pika.abc.AbstractIncomingMessage]:
        conn = await aio_pika.connect_robust(rabbit_url)
        try:
            channel = await conn.channel()
            try:
                q = await channel.declare_queue(queue, passive=True)
            except aiormq.exceptions.ChannelNotFoundEntity:
                return []
            got = []
            deadline = time.monotonic() + wait
            while len(got) < max_count and time.monotonic() < deadline:
                msg = await q.get(fail=False, no_ack=True)
                if msg is None:
                    await asyncio.sleep(0.05)
                    continue
                got.append(msg)
            return got
        finally:
            await conn.close()

    return run(go())  # type: ignore[no-any-return]


def new_job_id(prefix: str = "job") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"

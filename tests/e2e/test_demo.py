"""``jobtrail demo`` against the real servers: it shows retries, reroutes and dead letters,
stops by itself (or on Ctrl-C), and leaves a log that verifies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.harness import ROOT, cli, history, wait_for

# Importing demo_cli registers `jobtrail demo` (app.entrypoints.cli imports it too, once wired).
LAUNCH = (
    "import sys; from app.entrypoints import demo_cli; "
    "from app.entrypoints.cli import main; sys.argv[0] = 'jobtrail'; main()"
)
PROCESS_TIMEOUT = 120


@dataclass
class Demo:
    proc: subprocess.Popen[str]
    dashboard: str
    seen: list[str]


def start_demo(env: dict[str, str], *args: str) -> Demo:
    """Start ``jobtrail demo --json ARGS`` and wait for it to print its dashboard URL."""
    proc = subprocess.Popen(
        [sys.executable, "-c", LAUNCH, "demo", "--json", "--port", "0", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    seen: list[str] = []
    for line in iter(proc.stderr.readline, ""):
        seen.append(line)
        if line.startswith("dashboard: "):
            return Demo(proc, line.split()[1], seen)
    proc.wait(timeout=PROCESS_TIMEOUT)
    raise AssertionError(f"the demo never printed its dashboard: {''.join(seen)[-3000:]}")


def finish(demo: Demo) -> tuple[dict[str, Any], str]:
    out, err = demo.proc.communicate(timeout=PROCESS_TIMEOUT)
    stderr = "".join(demo.seen) + err
    assert demo.proc.returncode == 0, stderr[-3000:]
    return json.loads(out), stderr


@pytest.fixture
def demo_env(rabbit_url: str, pg_url: str, tmp_path: Path) -> dict[str, str]:
    """A fresh vhost, a SQLite log and PostgreSQL projections."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBTRAIL_")}
    env |= {
        "JOBTRAIL_RABBIT_URL": rabbit_url,
        "JOBTRAIL_LOG_URL": f"sqlite+aiosqlite:///{tmp_path / 'log.db'}",
        "JOBTRAIL_SQL_URL": pg_url,
        "PYTHONPATH": str(ROOT),
    }
    return env


def latency_counts(base: str) -> dict[str, float]:
    """How many waits, runs and end-to-end times the serving tracker observed, all labels."""
    text = httpx.get(base + "/metrics", timeout=30).text
    counts = dict.fromkeys(("wait", "run", "end_to_end"), 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            for measure in counts:
                if sample.name == f"jobtrail_job_{measure}_seconds_count":
                    assert "job_id" not in sample.labels
                    counts[measure] += sample.value
    return counts


def test_the_demo_shows_retries_reroutes_and_dead_letters_then_stops(
    demo_env: dict[str, str],
) -> None:
    demo = start_demo(demo_env, "--duration", "14", "--rate", "10", "--failure-rate", "0.2")
    try:
        # While it runs, the tracker's API and its dashboard answer on loopback.
        assert demo.dashboard.startswith("http://127.0.0.1:")
        page = httpx.get(demo.dashboard, timeout=30)
        assert page.status_code == 200, "create_api must call install_dashboard"
        assert "Jobtrail dashboard" in page.text
        data = httpx.get(demo.dashboard + "/data", timeout=30).json()
        assert data["queues"]["available"] is True
        base = demo.dashboard.removesuffix("/dashboard")
        wait_for(lambda: latency_counts(base)["run"] > 0, "runs in the tracker's histograms")
    finally:
        summary, stderr = finish(demo)
    assert "submitted" in stderr  # progress lines
    assert summary["submitted"] > 20
    assert summary["completed"] > 0
    assert summary["retried"] >= 1
    assert summary["rerouted"] >= 1
    assert summary["dead_lettered"] >= 1
    assert summary["dead_letter_reasons"].get("non_retryable", 0) >= 1
    assert summary["expired_leases"] >= 1 and summary["anomalies"] >= 1
    assert summary["dashboard"] == demo.dashboard

    env = {k: v for k, v in demo_env.items() if k.startswith("JOBTRAIL_")}
    rerouted = history(env, summary["examples"]["rerouted"])
    moves = [(e["from_pool"], e["pool"]) for e in rerouted if e["type"] == "rerouted"]
    assert moves == [("gpu-flaky", "gpu-a")]
    dead = history(env, summary["examples"]["dead-lettered"])
    assert dead[-1]["type"] == "dead_lettered"
    code, out = cli(env, "verify")
    assert code == 0, out
    assert ", 0 broken" in out


def test_ctrl_c_stops_the_demo_early_with_a_summary(demo_env: dict[str, str]) -> None:
    demo = start_demo(demo_env, "--duration", "600", "--rate", "5")
    demo.proc.send_signal(signal.SIGINT)
    summary, _ = finish(demo)
    assert summary["seconds"] < 600
    assert summary["submitted"] >= 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rate", "0"], "jobtrail: --rate must be between 0.1 and 200 jobs per second"),
        (["--nodes", "2"], "jobtrail: --nodes must be between 4 and 64"),
        (["--flaky-pool", "gpu-a"], "jobtrail: --flaky-pool must be new"),
    ],
)
def test_bad_knobs_are_one_line_and_exit_2(args: list[str], message: str) -> None:
    from app.entrypoints import demo_cli

    assert demo_cli
    code, out = cli({}, "demo", *args)
    assert (code, out.strip()) == (2, message)


def test_the_demo_refuses_a_vhost_where_a_tracker_runs(stack: dict[str, str]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBTRAIL_")}
    env |= stack | {"PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", LAUNCH, "demo", "--port", "0", "--duration", "5"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("jobtrail: a tracker already consumes on this RabbitMQ")
    assert proc.stdout == ""

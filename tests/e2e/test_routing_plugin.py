"""A routing plugin's round trip: install it, the tracker decides with it, replay equals, whatif
compares; a cooldown under way rebuilds equal and a restarted tracker does not ask again.

The plugin is the module of docs/routing-plugins.md, packaged by tests/fixtures/routing_plugin
and pip-installed (no network, no build isolation) with ``--target`` into a throwaway folder
that only the tracker and the ``whatif`` process get on their PYTHONPATH: the project's
environment is never changed, and this test's own process, which rebuilds and replays, cannot
import the plugin at all. Beside it, a test-only plugin (``slow-logged``) answers as the page's
does but with a cooldown of 10 minutes (the policy's is at most 5 s), and appends each call to a file: a job stays cooling down
under it while the test rebuilds and restarts the tracker.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.adapters.log_factory import open_event_log
from app.domain.policy import Policy
from app.services.rebuild import job_histories
from app.services.replay import replay_decisions
from tests.e2e.harness import (
    ROOT,
    RUN_CLI,
    TEST_POLICY,
    Tracker,
    cli,
    history,
    new_job_id,
    publish,
    status,
    tracker_env,
    wait_for,
    wait_status,
)

PLUGIN = "shortest-wait"
POLICY = TEST_POLICY + f'routing = "{PLUGIN}"\n'  # the last section of TEST_POLICY: [pools.flaky]
SLOW = "slow-logged"
SLOW_POLICY = TEST_POLICY + f'routing = "{SLOW}"\n'
SLOW_PACKAGE = f"""
[build-system]
requires = []
build-backend = "tiny_backend"
backend-path = ["."]

[project]
name = "jobtrail-slow-logged"
version = "0.0.1"

[project.entry-points."jobtrail.routing"]
{SLOW} = "slow_logged:route"
"""
SLOW_MODULE = '''"""slow_logged: shortest_wait's pool after 10 minutes; each call appended to $SLOW_LOGGED_CALLS."""

import os
from datetime import timedelta

from shortest_wait import route as shortest_wait

from app.domain.routing import RoutingChoice, RoutingRequest


def route(request: RoutingRequest) -> RoutingChoice:
    with open(os.environ["SLOW_LOGGED_CALLS"], "a") as calls:
        calls.write(f"{request.state.job_id} {request.state.attempt}\\n")
    return RoutingChoice(pool=shortest_wait(request).pool, cooldown=timedelta(minutes=10))
'''
DOCS = ROOT / "docs" / "routing-plugins.md"
SUBMIT = {"job_type": "sync", "model": "m", "priority": "urgent", "tenant": "acme"}


def _docs_block(language: str, index: int = 0) -> str:
    return re.findall(rf"```{language}\n(.*?)```", DOCS.read_text(), flags=re.S)[index]


def test_the_pages_package_and_policy_are_the_ones_tested() -> None:
    documented = tomllib.loads(_docs_block("toml", 0))["project"]
    fixture = ROOT / "tests" / "fixtures" / "routing_plugin" / "pyproject.toml"
    assert documented == tomllib.loads(fixture.read_text())["project"]
    policy = Policy.from_toml(_docs_block("toml", 1))
    assert policy.routing_plugins() == {PLUGIN}
    assert Policy.from_toml(POLICY).document.pools["flaky"].routing == PLUGIN


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the installed plugin packages (for PYTHONPATH), and nothing else."""
    work = tmp_path_factory.mktemp("plugin")
    package, slow = work / "package", work / "slow"
    shutil.copytree(ROOT / "tests" / "fixtures" / "routing_plugin", package)
    (package / "shortest_wait.py").write_text(_docs_block("python"))
    shutil.copytree(ROOT / "tests" / "fixtures" / "routing_plugin", slow)
    (slow / "pyproject.toml").write_text(SLOW_PACKAGE)
    (slow / "slow_logged.py").write_text(SLOW_MODULE)
    site = work / "site"
    done = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps"),
            *("--no-build-isolation", "--target", str(site), str(package), str(slow)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (site / "shortest_wait.py").exists() and (site / "slow_logged.py").exists()
    return site


def _routing_tracker(
    policy: str, plugin_site: Path, mongo_url: str, pg_url: str, rabbit_url: str, tmp_path: Path
) -> Iterator[tuple[dict[str, str], Tracker]]:
    env = tracker_env(rabbit_url, mongo_url, pg_url, tmp_path)
    Path(env["JOBTRAIL_POLICY_FILE"]).write_text(policy)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(plugin_site)])
    env["SLOW_LOGGED_CALLS"] = str(tmp_path / "slow-logged-calls.txt")
    tracker = Tracker(env, tmp_path)
    tracker.start()
    yield env, tracker
    tracker.stop()


@pytest.fixture
def routed(
    plugin_site: Path, mongo_url: str, pg_url: str, rabbit_url: str, tmp_path: Path
) -> Iterator[tuple[dict[str, str], Tracker]]:
    """A tracker whose policy routes pool 'flaky' with the installed plugin."""
    yield from _routing_tracker(POLICY, plugin_site, mongo_url, pg_url, rabbit_url, tmp_path)


@pytest.fixture
def slow(
    plugin_site: Path, mongo_url: str, pg_url: str, rabbit_url: str, tmp_path: Path
) -> Iterator[tuple[dict[str, str], Tracker]]:
    """A tracker whose policy routes pool 'flaky' with the test-only slow-logged plugin."""
    yield from _routing_tracker(SLOW_POLICY, plugin_site, mongo_url, pg_url, rabbit_url, tmp_path)


def _submit(env: dict[str, str], job_id: str, pool: str) -> None:
    publish(env["JOBTRAIL_RABBIT_URL"], lambda c: c.submit(job_id, pool=pool, **SUBMIT))
    wait_for(lambda: status(env, job_id), f"{job_id} to be recorded")


def _whatif(env: dict[str, str], workdir: Path, *args: str) -> dict[str, object]:
    """``jobtrail whatif`` in a process that can import the plugin."""
    done = subprocess.run(
        [sys.executable, "-c", RUN_CLI, "whatif", *args, "--json"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


async def _replay(log_url: str) -> tuple[int, list[object]]:
    log = open_event_log(log_url)
    try:
        policy = Policy.from_toml(POLICY)
        divergences: list[object] = []
        routed = 0
        async for events in job_histories(log.scan()):
            routed += sum(1 for r in events if r.event.type == "routed")
            divergences += replay_decisions(events, policy)
        return routed, divergences
    finally:
        await log.close()


def test_the_plugin_decides_replay_and_rebuild_agree_and_whatif_compares(
    routed: tuple[dict[str, str], Tracker], tmp_path: Path
) -> None:
    env, tracker = routed
    rabbit = env["JOBTRAIL_RABBIT_URL"]
    # a job on 'steady' gives the fleet a wait to see; then a job on 'flaky' fails
    steady, flaky = new_job_id("steady"), new_job_id("flaky")
    _submit(env, steady, "steady")
    publish(rabbit, lambda c: c.reserved(steady, 1, "n1"), lambda c: c.completed(steady, 1, "n1"))
    wait_status(env, steady, "completed")
    _submit(env, flaky, "flaky")
    publish(rabbit, lambda c: c.reserved(flaky, 1, "n2"), lambda c: c.failed(flaky, 1, "n2", "oom"))
    row = wait_for(lambda: (s := status(env, flaky)) and s["attempt"] == 2 and s, "the reroute")
    assert (row["pool"], row["status"]) == ("steady", "queued")
    (answer,) = [e for e in history(env, flaky) if e["type"] == "routed"]
    (rerouted,) = [e for e in history(env, flaky) if e["type"] == "rerouted"]
    routing = rerouted["routing"]
    assert answer["routing"] == routing and answer["attempt"] == 1
    assert (routing["plugin"], routing["version"], routing["pool"]) == (PLUGIN, "1.0.0", "steady")
    assert (routing["cooldown_seconds"], routing["fallback"]) == (0.25, None)
    assert [f["pool"] for f in routing["fleet"]] == ["steady"]  # flaky had ended no attempt yet
    assert routing["fleet"][0]["outcomes"] == 1 and routing["fleet"][0]["failure_rate"] == 0
    publish(rabbit, lambda c: c.reserved(flaky, 2, "n3"), lambda c: c.completed(flaky, 2, "n3"))
    wait_status(env, flaky, "completed")
    assert tracker.stop() == 0
    assert "routing plugin" not in tracker.log_text()  # no fallback warning

    # this process cannot import the plugin: replay and rebuild use the recorded answer
    with pytest.raises(ImportError):
        __import__("shortest_wait")
    routed_count, divergences = asyncio.run(_replay(env["JOBTRAIL_LOG_URL"]))
    assert routed_count == 1 and divergences == []
    code, out = cli(env, "rebuild", "--dry-run")
    assert code == 0 and "2 identical, 0 different" in out, out
    code, out = cli(env, "verify", "--job", flaky)
    assert code == 0, out

    # the same plugin replayed decides the same; in-process the plugin is missing: one line
    report = _whatif(env, tmp_path, "--routing", PLUGIN)
    assert report["jobs_changed"] == 0
    real, simulated = report["real"], report["simulated"]
    assert isinstance(real, dict) and isinstance(simulated, dict)
    assert real["attempts_by_pool"] == simulated["attempts_by_pool"] == {"flaky": 1, "steady": 2}
    assert real["rerouted"] == simulated["rerouted"] == 1
    code, out = cli(env, "whatif", "--routing", PLUGIN)
    assert code == 2 and f"routing plugin {PLUGIN!r} is not installed" in out, out
    # least-failing, shipped with Jobtrail, compared with what the plugin did
    code, out = cli(env, "whatif", "--routing", "least-failing")
    assert code == 0 and "attempts on steady" in out and "under routing least-failing" in out


def test_a_cooldown_under_a_plugin_rebuilds_equal_and_a_restarted_tracker_does_not_ask_again(
    slow: tuple[dict[str, str], Tracker],
) -> None:
    env, tracker = slow
    rabbit, calls = env["JOBTRAIL_RABBIT_URL"], Path(env["SLOW_LOGGED_CALLS"])
    flaky = new_job_id("flaky")
    _submit(env, flaky, "flaky")
    publish(rabbit, lambda c: c.reserved(flaky, 1, "n1"), lambda c: c.failed(flaky, 1, "n1", "oom"))
    row = wait_status(env, flaky, "cooling_down")
    (answer,) = [e for e in history(env, flaky) if e["type"] == "routed"]
    assert (answer["routing"]["plugin"], answer["routing"]["cooldown_seconds"]) == (SLOW, 600)
    assert calls.read_text().splitlines() == [f"{flaky} 1"]
    assert row["deadline_kind"] == "cooldown"

    # the rebuilt tables hold the plugin's 10 minutes as the job's timer, as the tracker's do
    code, out = cli(env, "rebuild", "--dry-run")
    assert code == 0 and "1 identical, 0 different" in out, out

    # a restarted tracker settling the job again (a late duplicate report) reads the answer
    # from the log: the plugin is not asked again and the timer stays the plugin's
    assert tracker.stop() == 0
    tracker.start()
    publish(rabbit, lambda c: c.failed(flaky, 1, "n1", "oom"))
    again = wait_for(lambda: (s := status(env, flaky)) and s["anomalies"] == 1 and s, "the report")
    assert (again["status"], again["attempt"]) == ("cooling_down", 1)
    assert again["next_deadline_at"] == row["next_deadline_at"]
    assert calls.read_text().splitlines() == [f"{flaky} 1"]
    code, out = cli(env, "rebuild", "--dry-run")
    assert code == 0 and "1 identical, 0 different" in out, out

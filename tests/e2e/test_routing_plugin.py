"""A routing plugin's round trip: install it, the tracker decides with it, replay equals, whatif
compares.

The plugin is the module of docs/routing-plugins.md, packaged by tests/fixtures/routing_plugin
and pip-installed (no network, no build isolation) with ``--target`` into a throwaway folder
that only the tracker and the ``whatif`` process get on their PYTHONPATH: the project's
environment is never changed, and this test's own process, which rebuilds and replays, cannot
import the plugin at all.
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
    """A folder holding the installed plugin package (for PYTHONPATH), and nothing else."""
    work = tmp_path_factory.mktemp("plugin")
    package = work / "package"
    shutil.copytree(ROOT / "tests" / "fixtures" / "routing_plugin", package)
    (package / "shortest_wait.py").write_text(_docs_block("python"))
    site = work / "site"
    done = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps"),
            *("--no-build-isolation", "--target", str(site), str(package)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (site / "shortest_wait.py").exists()
    return site


@pytest.fixture
def routed(
    plugin_site: Path, mongo_url: str, pg_url: str, rabbit_url: str, tmp_path: Path
) -> Iterator[tuple[dict[str, str], Tracker]]:
    """A tracker whose policy routes pool 'flaky' with the installed plugin."""
    env = tracker_env(rabbit_url, mongo_url, pg_url, tmp_path)
    Path(env["JOBTRAIL_POLICY_FILE"]).write_text(POLICY)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(plugin_site)])
    tracker = Tracker(env, tmp_path)
    tracker.start()
    yield env, tracker
    tracker.stop()


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
            routed += sum(1 for r in events if getattr(r.event, "routing", None) is not None)
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
    (rerouted,) = [e for e in history(env, flaky) if e["type"] == "rerouted"]
    routing = rerouted["routing"]
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

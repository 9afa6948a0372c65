"""A broker or store that is not ready gets one clear line naming it and the fix, never a
traceback and never a tracker that says "serving" while events pile up (``jobtrail serve``
preflight and ``jobtrail doctor``), against real brokers: the machine's RabbitMQ (a vhost of the
test's own, a user with too few permissions) and a private node without the consistent-hash
plugin."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from scripts.private_servers import PrivateRabbit
from tests.servers import RABBIT_API, RABBIT_API_AUTH

pytestmark = pytest.mark.integration


def _env(tmp_path: Path, rabbit_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBTRAIL_")}
    return env | {
        "JOBTRAIL_RABBIT_URL": rabbit_url,
        "JOBTRAIL_LOG_URL": f"sqlite+aiosqlite:///{tmp_path / 'log.db'}",
        "JOBTRAIL_SQL_URL": f"sqlite+aiosqlite:///{tmp_path / 'jobtrail.db'}",
        "JOBTRAIL_HTTP_PORT": "0",
    }


def _jobtrail(env: dict[str, str], cwd: Path, *args: str) -> tuple[int, str, str, float]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "app", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, done.stdout, done.stderr, time.monotonic() - started


def _one_line_error(stderr: str) -> str:
    """The ``jobtrail:`` lines of a failed start (the JSON log lines are not errors)."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("jobtrail: ")]
    assert len(lines) == 1, stderr
    return lines[0]


def test_doctor_passes_on_a_ready_broker_and_migrated_stores(
    tmp_path: Path, rabbit_url: str
) -> None:
    env = _env(tmp_path, rabbit_url)
    code, out, err, _ = _jobtrail(env, tmp_path, "doctor")
    assert code == 1, out + err  # not migrated yet: said, with the fix
    assert "FAIL projections: schema at none" in out and "(fix: jobtrail migrate)" in out
    assert _jobtrail(env, tmp_path, "migrate")[0] == 0
    code, out, err, _ = _jobtrail(env, tmp_path, "doctor")
    assert code == 0, out + err
    names = [line.split(":")[0] for line in out.splitlines()]
    assert names == [
        "ok   broker",
        "ok   permissions",
        "ok   consistent-hash plugin",
        "ok   projections",
        "ok   event log",
    ]


def test_serve_refuses_an_unreachable_broker_in_one_line(tmp_path: Path) -> None:
    env = _env(tmp_path, "amqp://guest:guest@127.0.0.1:1/")
    code, _, err, _ = _jobtrail(env, tmp_path, "serve")
    assert code == 2
    line = _one_line_error(err)
    assert "127.0.0.1:1 is not reachable" in line and "rabbitmq-server" in line


def test_serve_refuses_a_missing_vhost_naming_it(tmp_path: Path, rabbit_url: str) -> None:
    missing = rabbit_url.rsplit("/", 1)[0] + "/" + quote(f"jt-missing-{uuid.uuid4().hex[:6]}")
    code, _, err, _ = _jobtrail(_env(tmp_path, missing), tmp_path, "serve")
    assert code == 2
    line = _one_line_error(err)
    assert "would not open vhost 'jt-missing-" in line and "rabbitmqctl add_vhost" in line


@pytest.fixture
def limited_user(rabbit_url: str) -> Iterator[str]:
    """A user of the test's vhost that may write and read but not configure (declare)."""
    vhost = rabbit_url.rsplit("/", 1)[1]
    user = f"jt-limited-{uuid.uuid4().hex[:6]}"
    with httpx.Client(base_url=RABBIT_API, auth=RABBIT_API_AUTH, timeout=10) as api:
        api.put(f"/users/{user}", json={"password": "pw", "tags": ""}).raise_for_status()
        api.put(
            f"/permissions/{vhost}/{user}", json={"configure": "^$", "write": ".*", "read": ".*"}
        ).raise_for_status()
        try:
            yield rabbit_url.replace("guest:guest@", f"{user}:pw@")
        finally:
            api.delete(f"/users/{user}")


def test_serve_refuses_a_user_without_configure_permission(
    tmp_path: Path, limited_user: str
) -> None:
    code, _, err, _ = _jobtrail(_env(tmp_path, limited_user), tmp_path, "serve")
    assert code == 2
    line = _one_line_error(err)
    assert "may not configure" in line and "rabbitmqctl set_permissions" in line


class _RabbitWithoutHashing(PrivateRabbit):
    """A private node with no plugin at all, as a stock RabbitMQ install comes."""

    def _configure(self) -> None:
        super()._configure()
        (self.base / "enabled_plugins").write_text("[].\n")


@pytest.fixture(scope="module")
def bare_rabbit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRabbit]:
    with _RabbitWithoutHashing(tmp_path_factory.mktemp("bare-rabbit")) as node:
        yield node


def test_serve_without_the_hash_plugin_exits_within_30s_naming_it(
    tmp_path: Path, bare_rabbit: PrivateRabbit
) -> None:
    code, out, err, took = _jobtrail(_env(tmp_path, bare_rabbit.url), tmp_path, "serve")
    assert code == 2, out + err
    assert took < 30, f"took {took:.1f}s"
    line = _one_line_error(err)
    assert "rabbitmq-plugins enable rabbitmq_consistent_hash_exchange" in line
    assert "jobtrail serving" not in err + out
    code, out, _, _ = _jobtrail(_env(tmp_path, bare_rabbit.url), tmp_path, "doctor")
    assert code == 1
    assert "FAIL consistent-hash plugin" in out and "ok   permissions" in out


def test_api_refuses_unmigrated_stores_and_needs_no_broker(tmp_path: Path) -> None:
    env = _env(tmp_path, "amqp://guest:guest@127.0.0.1:1/")  # no broker: the API reads only
    code, _, err, _ = _jobtrail(env, tmp_path, "api")
    assert code == 2
    assert "schema at none" in err and "(fix: jobtrail migrate)" in err
    assert "Traceback" not in err and "broker" not in err

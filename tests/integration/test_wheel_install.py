"""Jobtrail installs like a library: a built wheel migrates, serves and answers from anywhere.

The Docker image and a user's ``pip install jobtrail`` get what the wheel carries, not the
checkout: this builds the wheel, installs it into a fresh virtualenv and runs ``jobtrail
migrate``, ``serve`` and ``status`` from a directory outside the checkout, with no PYTHONPATH.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import pytest

from tests import servers
from tests.e2e.harness import new_job_id, publish

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = sorted(
    path.relative_to(ROOT).as_posix()
    for folder in ("app/entrypoints/templates", "app/adapters/templates")
    for path in (ROOT / folder).iterdir()
)
"""Every page, script and style the dashboard and the report read, as the source tree has them."""
SUBMIT = {"job_type": "sync", "model": "m", "priority": "bulk", "tenant": "t", "pool": "p"}


def _run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"{args} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``bin`` directory of a fresh virtualenv holding only the built wheel (and its pins)."""
    work = tmp_path_factory.mktemp("wheel")
    _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", work, ROOT, cwd=work)
    (wheel,) = work.glob("jobtrail-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "app/migrations/env.py" in names, names
    assert any(n.startswith("app/migrations/versions/0001_") for n in names), names
    assert len(TEMPLATES) >= 4, TEMPLATES
    for template in TEMPLATES:
        assert template in names, names
    (entry_points,) = (n for n in names if n.endswith(".dist-info/entry_points.txt"))
    routing = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[jobtrail.routing]" in routing and "least-failing" in routing, routing
    _run(sys.executable, "-m", "venv", work / "venv", cwd=work)
    bin_dir = work / "venv" / "bin"
    _run(bin_dir / "pip", "install", "-q", "-c", ROOT / "constraints.txt", wheel, cwd=work)
    return bin_dir


def _env(tmp_path: Path, rabbit_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JOBTRAIL_", "PYTHON"))}
    return env | {
        "JOBTRAIL_RABBIT_URL": rabbit_url,
        "JOBTRAIL_LOG_URL": f"sqlite+aiosqlite:///{tmp_path / 'log.db'}",
        "JOBTRAIL_SQL_URL": f"sqlite+aiosqlite:///{tmp_path / 'jobtrail.db'}",
        "JOBTRAIL_HTTP_PORT": str(servers.free_port()),
    }


def test_the_installed_package_is_not_the_checkout(installed: Path, tmp_path: Path) -> None:
    where = _run(installed / "python", "-c", "import app; print(app.__file__)", cwd=tmp_path)
    assert "site-packages" in where and str(ROOT) not in where


def test_a_wheel_install_migrates_serves_and_answers_outside_the_checkout(
    installed: Path, tmp_path: Path, rabbit_url: str
) -> None:
    env = _env(tmp_path, rabbit_url)
    assert "migrations applied" in _run(installed / "jobtrail", "migrate", cwd=tmp_path, env=env)
    logfile = tmp_path / "serve.log"
    with logfile.open("wb") as out:
        serve = subprocess.Popen(
            [installed / "jobtrail", "serve"], cwd=tmp_path, env=env, stdout=out, stderr=out
        )
    try:
        _wait(lambda: "jobtrail serving" in logfile.read_text(errors="replace"), serve, logfile)
        job_id = new_job_id("wheel")
        publish(rabbit_url, lambda c: c.submit(job_id, payload={"prompt": "hi"}, **SUBMIT))

        def queued() -> bool:
            done = subprocess.run(
                [installed / "jobtrail", "status", job_id, "--json"],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            return done.returncode == 0 and json.loads(done.stdout)["status"] == "queued"

        _wait(queued, serve, logfile)
        _the_dashboard_page_is_served(env["JOBTRAIL_HTTP_PORT"])
        report = tmp_path / "report.html"
        _run(installed / "jobtrail", "analyze", "--html", report, cwd=tmp_path, env=env)
        assert "Jobtrail failure report" in report.read_text()
    finally:
        serve.send_signal(signal.SIGTERM)
        code = serve.wait(timeout=60)
    assert code == 0, logfile.read_text(errors="replace")[-3000:]


def _the_dashboard_page_is_served(port: str) -> None:
    """The page and its inline script come from the templates the wheel installed."""
    answer = httpx.get(f"http://127.0.0.1:{port}/dashboard", timeout=30)
    assert answer.status_code == 200, answer.text
    assert "<title>Jobtrail dashboard</title>" in answer.text
    script = answer.text.split("<script>", 1)[1].split("</script>", 1)[0]
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in answer.headers["content-security-policy"]


def _wait(check: object, serve: subprocess.Popen[bytes], logfile: Path) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        if serve.poll() is not None:
            break
        time.sleep(0.2)
    pytest.fail(f"jobtrail serve from the wheel:\n{logfile.read_text(errors='replace')[-4000:]}")

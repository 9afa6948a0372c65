"""The supervisor of ``serve --workers N`` with stand-in trackers (tests/supervisor_fakes.py) in
real worker processes: it stops every worker on SIGTERM, kills one that does not stop within
the grace period, and gives up on a worker that keeps dying at start, in one line."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.entrypoints.supervisor import RestartPolicy, Serve, Supervisor
from app.settings import Settings
from tests import supervisor_fakes
from tests.e2e.harness import wait_for


@pytest.fixture
def sock() -> Iterator[socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listening:
        yield listening


def _supervisor(
    tmp_path: Path, sock: socket.socket, serve: Serve, count: int, **settings: float
) -> Supervisor:
    fast = RestartPolicy(first_delay_s=0.01, max_delay_s=0.05, max_early_exits=3)
    return Supervisor(Settings(data_dir=tmp_path, **settings), count, sock, serve, policy=fast)


def _sigterm_once_ready(tmp_path: Path, workers: int) -> threading.Thread:
    """SIGTERM this process (the supervisor) once ``workers`` workers said they started."""

    def send() -> None:
        wait_for(lambda: len(list(tmp_path.glob("ready-*"))) >= workers, "the workers to start", 60)
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def _pids(tmp_path: Path) -> list[int]:
    return [int(path.name.removeprefix("ready-")) for path in tmp_path.glob("ready-*")]


def test_sigterm_stops_every_worker_and_exits_0(
    tmp_path: Path, sock: socket.socket, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "jobtrail.supervisor")
    before = signal.getsignal(signal.SIGTERM)
    sender = _sigterm_once_ready(tmp_path, 2)
    code = _supervisor(tmp_path, sock, supervisor_fakes.stops_on_sigterm, 2).run()
    sender.join(5)
    assert code == 0
    assert all(not Path(f"/proc/{pid}").exists() for pid in _pids(tmp_path))
    stopped = [r for r in caplog.records if r.getMessage() == "jobtrail worker stopped"]
    assert sorted((r.worker, r.exit) for r in stopped) == [(1, "exit code 0"), (2, "exit code 0")]
    assert signal.getsignal(signal.SIGTERM) == before  # the caller's handler is back


def test_a_worker_that_ignores_sigterm_is_killed_after_the_grace_period(
    tmp_path: Path, sock: socket.socket, caplog: pytest.LogCaptureFixture
) -> None:
    sender = _sigterm_once_ready(tmp_path, 1)
    supervisor = _supervisor(tmp_path, sock, supervisor_fakes.ignores_sigterm, 1, stop_grace_s=0.5)
    code = supervisor.run()
    sender.join(5)
    assert code == 1
    assert all(not Path(f"/proc/{pid}").exists() for pid in _pids(tmp_path))
    assert "jobtrail worker still running after 0.5s; killed" in caplog.text


def test_a_worker_that_keeps_dying_at_start_is_given_up_on_in_one_line(
    tmp_path: Path,
    sock: socket.socket,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.INFO, "jobtrail.supervisor")
    code = _supervisor(tmp_path, sock, supervisor_fakes.exits_at_once, 1).run()
    assert code == 1
    starts = [r for r in caplog.records if r.getMessage() == "jobtrail worker started"]
    restarts = [r for r in caplog.records if r.getMessage().startswith("jobtrail worker exited")]
    assert len(starts) == 3 and [r.restart_in_s for r in restarts] == [0.01, 0.02]
    assert capsys.readouterr().err.splitlines() == [
        "jobtrail: worker 1 exited 3 times in a row within 10 s of starting "
        "(last: exit code 3); giving up"
    ]

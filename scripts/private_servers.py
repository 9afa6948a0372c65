"""Private PostgreSQL, SecantusDB and RabbitMQ instances for fault-injection tests.

Outage tests stop and restart database and broker processes. They must never touch the
machine-wide servers other tests are using, so each instance here lives in a temporary directory
of its own, listens on free loopback ports, and is stopped only through the process id or the
node name this module started it with.

As a library (``tests/faults``)::

    with PrivatePostgres(tmp) as pg:
        url = pg.create_database("jt_log")   # postgresql+asyncpg://...
        pg.stop()                            # pg_ctl stop -m immediate: a crash, not a shutdown
        pg.start()                           # crash recovery, same port and data

From the command line, to reproduce a test by hand (prints the URL, runs until Ctrl-C)::

    .venv/bin/python scripts/private_servers.py postgres|secantus|rabbitmq
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Self

ROOT = Path(__file__).resolve().parent.parent
SECANTUSD = Path(os.environ.get("JOBTRAIL_SECANTUSD", ROOT / ".venv-secantus/bin/secantusd-py"))
RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")
START_TIMEOUT = 90.0


class ServerError(RuntimeError):
    """A private server could not be started or stopped."""


def free_port() -> int:
    """A TCP port nobody listens on right now (on 127.0.0.1)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port``."""
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_until(check: Callable[[], bool], what: str, timeout: float = START_TIMEOUT) -> None:
    """Poll ``check`` until it is true; ServerError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.2)
    raise ServerError(f"{what} within {timeout:.0f}s")


def _run(args: list[str], *, env: dict[str, str] | None = None, timeout: float = 120) -> str:
    # A fixed argv of server binaries, never a shell: nothing untrusted reaches it.
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout)  # noqa: S603
    if done.returncode != 0:
        raise ServerError(f"{' '.join(args[:4])}… failed: {done.stderr.strip()[-2000:]}")
    return done.stdout


class _Server:
    """Context-manager plumbing shared by the three servers."""

    def start(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        """Where clients connect."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class PrivatePostgres(_Server):
    """A PostgreSQL cluster of its own (``initdb``), run as the ``postgres`` user when root."""

    def __init__(self, base: Path | None = None, port: int | None = None) -> None:
        # The postgres user must reach the directory: a test's own tmp_path (0700, root) will not
        # do, so by default the cluster gets a directory of its own in the system temp dir.
        self.base = base / "pg" if base else Path(tempfile.mkdtemp(prefix="jt-private-pg-"))
        self.data = self.base / "data"
        self.port = port or free_port()
        self._bin = _postgres_bin()
        self._as_owner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        """Create the cluster on first use, then start it (waits until it accepts connections)."""
        if not self.data.exists():
            self._init()
        options = (
            f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c max_connections=200 -c full_page_writes=off"
        )
        self._pg_ctl("start", "-w", "-t", "90", "-l", str(self.base / "server.log"), "-o", options)

    def stop(self, mode: str = "immediate") -> None:
        """Stop the server: ``immediate`` is a crash (recovery on the next start)."""
        self._pg_ctl("stop", "-w", "-t", "60", "-m", mode)

    def running(self) -> bool:
        return port_open(self.port)

    def describe(self) -> str:
        return self.admin_url

    def create_database(self, name: str) -> str:
        """Create a database; returns its SQLAlchemy (asyncpg) URL."""
        _run([*self._as_owner, self._bin("createdb"), "-h", "127.0.0.1", "-p", str(self.port),
              "-U", "postgres", name])  # fmt: skip
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{name}"

    def close(self) -> None:
        if self.running():
            with contextlib.suppress(ServerError, subprocess.TimeoutExpired):
                self.stop("fast")
        shutil.rmtree(self.base, ignore_errors=True)

    def _init(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        self.base.chmod(0o700)
        if self._as_owner:
            shutil.chown(self.base, "postgres", "postgres")
        _run([*self._as_owner, self._bin("initdb"), "-D", str(self.data), "-A", "trust",
              "-U", "postgres", "-E", "UTF8", "--no-sync"])  # fmt: skip

    def _pg_ctl(self, *args: str) -> None:
        _run([*self._as_owner, self._bin("pg_ctl"), "-D", str(self.data), *args])


def _postgres_bin() -> Callable[[str], str]:
    """A lookup of the newest Debian PostgreSQL binaries (``/usr/lib/postgresql/<v>/bin``)."""
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3])
    )
    if not versions:
        raise ServerError("no PostgreSQL binaries under /usr/lib/postgresql/*/bin")
    bindir = versions[-1].parent
    return lambda name: str(bindir / name)


class PrivateSecantus(_Server):
    """A SecantusDB (MongoDB wire protocol) process on its own port and storage path."""

    def __init__(self, base: Path, port: int | None = None) -> None:
        self.storage = base / "secantus"
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.auth = False
        """Start with ``--auth``: users, roles and privileges enforced (create them before)."""

    def url(self, database: str) -> str:
        return f"mongodb://127.0.0.1:{self.port}/{database}?directConnection=true&retryWrites=false"

    def describe(self) -> str:
        return self.url("jobtrail")

    def start(self) -> None:
        """Start (or restart, on the same port and storage) and wait until it answers a ping."""
        if not SECANTUSD.exists():
            raise ServerError(f"SecantusDB not found at {SECANTUSD}: run `make setup`")
        self.storage.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        with (self.storage.parent / f"secantusd-{self.starts}.log").open("wb") as out:
            self.proc = subprocess.Popen(  # noqa: S603 - a fixed argv, no shell
                [str(SECANTUSD), "--host", "127.0.0.1", "--port", str(self.port),
                 "--storage-path", str(self.storage), "--sync-on-commit",
                 *(["--auth"] if self.auth else [])],
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        wait_until(self._ping, f"SecantusDB on port {self.port} did not answer")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the process (SIGTERM by default; SIGKILL for a crash)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
        wait_until(lambda: not port_open(self.port), "SecantusDB did not release its port", 30)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.storage, ignore_errors=True)

    def _ping(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise ServerError(f"SecantusDB exited with {self.proc.returncode}")
        from pymongo import MongoClient

        client: MongoClient[dict[str, object]] = MongoClient(
            self.url("admin"), serverSelectionTimeoutMS=1000
        )
        try:
            client.admin.command("ping")
            return True
        finally:
            client.close()


class PrivateRabbit(_Server):
    """A RabbitMQ node of its own (node name, ports, data, cookie) with consistent hashing."""

    def __init__(self, base: Path) -> None:
        self.base = base / "rabbit"
        self.node = f"jt-fault-{uuid.uuid4().hex[:8]}@localhost"
        self.port = free_port()
        self.dist_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def describe(self) -> str:
        return self.url

    def env(self) -> dict[str, str]:
        """The environment of the node and of ``rabbitmqctl`` calls to it."""
        b = self.base
        return {
            **{k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))},
            "HOME": str(b / "home"),  # its own Erlang cookie
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(b / "mnesia"),
            "RABBITMQ_LOG_BASE": str(b / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(b / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(b / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(b / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(b / "rabbitmq-env.conf"),
            "RABBITMQ_PID_FILE": str(b / "node.pid"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_SERVER_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    def start(self) -> None:
        """Start (or restart, with the same data) and wait until the node has booted."""
        if not (self.base / "rabbitmq.conf").exists():
            self._configure()
        self.starts += 1
        with (self.base / f"server-{self.starts}.log").open("wb") as out:
            self.proc = subprocess.Popen(  # noqa: S603 - a fixed argv, no shell
                [str(RABBIT_BIN / "rabbitmq-server")],
                env=self.env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_until(self._booted, f"RabbitMQ node {self.node} did not boot")

    def stop(self) -> None:
        """A clean broker stop (``rabbitmqctl stop``), as an operator or a package upgrade does."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ServerError):
            self.ctl("stop")
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the group this module started
            self.proc.wait(timeout=30)

    def wipe(self) -> None:
        """Forget every queue, exchange and message (the node must be stopped)."""
        assert self.proc is None or self.proc.poll() is not None, "stop the node first"
        shutil.rmtree(self.base / "mnesia", ignore_errors=True)

    def ctl(self, *args: str, timeout: float = 60) -> str:
        """Run ``rabbitmqctl -n <node> -q <args>`` and return its output."""
        return _run(
            [str(RABBIT_BIN / "rabbitmqctl"), "-n", self.node, "-q", *args],
            env=self.env(),
            timeout=timeout,
        )

    def queues(self) -> dict[str, tuple[int, int]]:
        """Every queue of the default vhost: name → (ready, unacknowledged)."""
        out = self.ctl("list_queues", "--no-table-headers", "name", "messages_ready",
                       "messages_unacknowledged")  # fmt: skip
        rows = (line.split("\t") for line in out.splitlines() if line.strip())
        return {name: (int(ready), int(unacked)) for name, ready, unacked in rows}

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def _configure(self) -> None:
        (self.base / "home").mkdir(parents=True, exist_ok=True)
        (self.base / "enabled_plugins").write_text("[rabbitmq_consistent_hash_exchange].\n")
        (self.base / "rabbitmq-env.conf").write_text("")
        (self.base / "rabbitmq.conf").write_text(
            f"listeners.tcp.local = 127.0.0.1:{self.port}\nloopback_users = none\n"
        )

    def _booted(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise ServerError(f"RabbitMQ node {self.node} exited with {self.proc.returncode}")
        self.ctl("await_startup", "--timeout", "5", timeout=30)
        return port_open(self.port)


def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("server", choices=["postgres", "secantus", "rabbitmq"])
    server = parser.parse_args().server
    base = Path(tempfile.mkdtemp(prefix="jt-private-"))
    instance: _Server
    if server == "postgres":
        instance = PrivatePostgres(base)
    elif server == "secantus":
        instance = PrivateSecantus(base)
    else:
        instance = PrivateRabbit(base)
    with _until_interrupted(), instance:
        print(f"{server}: {instance.describe()} (data in {base}); Ctrl-C stops it", flush=True)
        signal.pause()


@contextlib.contextmanager
def _until_interrupted() -> Iterator[None]:
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with contextlib.suppress(KeyboardInterrupt):
        yield


if __name__ == "__main__":
    _main()

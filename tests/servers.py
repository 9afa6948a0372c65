"""Start or reach the real servers the tests need; a missing server fails the run, never skips.

- MongoDB-speaking server: ``JOBTRAIL_TEST_MONGO_URL`` if set (a real mongod, as in GitHub
  Actions); otherwise SecantusDB is started from its own virtualenv (``make setup`` installs it in
  ``.venv-secantus``; ``JOBTRAIL_SECANTUSD`` may name another binary).
- PostgreSQL: ``JOBTRAIL_TEST_PG_URL`` (default the local server); each test gets a fresh database.
- RabbitMQ: ``JOBTRAIL_TEST_RABBIT_URL`` and the management API at ``JOBTRAIL_TEST_RABBIT_API``;
  each test gets a fresh virtual host, deleted afterwards.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote, unquote

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get(
    "JOBTRAIL_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
RABBIT_URL = os.environ.get("JOBTRAIL_TEST_RABBIT_URL", "amqp://guest:guest@127.0.0.1:5672/")
RABBIT_API = os.environ.get("JOBTRAIL_TEST_RABBIT_API", "http://127.0.0.1:15672/api")
RABBIT_API_AUTH = ("guest", "guest")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except Exception as exc:
            last = exc
        time.sleep(0.2)
    pytest.fail(f"{what} did not answer within {timeout:.0f}s (last error: {last!r})")


def _mongo_ping(url: str) -> bool:
    from pymongo import MongoClient

    client: MongoClient[dict[str, object]] = MongoClient(url, serverSelectionTimeoutMS=1000)
    try:
        client.admin.command("ping")
        return True
    finally:
        client.close()


@contextmanager
def mongo_server(storage: Path) -> Iterator[str]:
    """Yield a base URL (no database) of a MongoDB-speaking server."""
    if url := os.environ.get("JOBTRAIL_TEST_MONGO_URL"):
        wait_until(lambda: _mongo_ping(url), f"MongoDB at {url}")
        yield url.rstrip("/")
        return
    binary = Path(os.environ.get("JOBTRAIL_SECANTUSD", ROOT / ".venv-secantus/bin/secantusd-py"))
    if not binary.exists():
        pytest.fail(
            f"SecantusDB not found at {binary}: run `make setup` (or set JOBTRAIL_TEST_MONGO_URL)"
        )
    port = free_port()
    log = (storage / "secantusd.log").open("wb")
    proc = subprocess.Popen(
        [str(binary), "--host", "127.0.0.1", "--port", str(port), "--storage-path", str(storage)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"mongodb://127.0.0.1:{port}"
    try:
        wait_until(lambda: _mongo_ping(base + "/?directConnection=true"), "SecantusDB")
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def mongo_database_url(base: str, name: str) -> str:
    return f"{base}/{name}?directConnection=true&retryWrites=false"


async def _pg_exec(statement: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN_URL, timeout=10)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@contextmanager
def pg_database() -> Iterator[str]:
    """Yield a SQLAlchemy URL of a fresh PostgreSQL database, dropped afterwards."""
    name = f"jt_{uuid.uuid4().hex[:12]}"
    try:
        asyncio.run(_pg_exec(f'CREATE DATABASE "{name}"'))
    except OSError as exc:
        pytest.fail(f"PostgreSQL at {PG_ADMIN_URL} is not reachable: {exc}")
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    try:
        yield f"{base}/{name}"
    finally:
        asyncio.run(_pg_exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextmanager
def rabbit_vhost() -> Iterator[str]:
    """Yield an AMQP URL of a fresh virtual host, deleted afterwards."""
    vhost = f"jt-{uuid.uuid4().hex[:12]}"
    with httpx.Client(base_url=RABBIT_API, auth=RABBIT_API_AUTH, timeout=10) as api:
        try:
            api.put(f"/vhosts/{vhost}").raise_for_status()
        except httpx.HTTPError as exc:
            pytest.fail(f"RabbitMQ management API at {RABBIT_API} is not reachable: {exc}")
        api.put(
            f"/permissions/{vhost}/guest",
            json={"configure": ".*", "write": ".*", "read": ".*"},
        ).raise_for_status()
        try:
            yield RABBIT_URL.rstrip("/") + "/" + quote(vhost, safe="")
        finally:
            api.delete(f"/vhosts/{vhost}")


def active_consumers(amqp_url: str) -> dict[str, list[str]]:
    """Per queue of ``amqp_url``'s virtual host, the names its consuming connections gave
    themselves, active consumers only (management API; it lists consumers after a short delay)."""
    return _consumers(amqp_url, active=True)


def waiting_consumers(amqp_url: str) -> dict[str, list[str]]:
    """As ``active_consumers``, the consumers a single-active-consumer queue keeps waiting."""
    return _consumers(amqp_url, active=False)


def _consumers(amqp_url: str, *, active: bool) -> dict[str, list[str]]:
    vhost = amqp_url.rsplit("/", 1)[1]
    with httpx.Client(base_url=RABBIT_API, auth=RABBIT_API_AUTH, timeout=10) as api:
        names = {
            c["name"]: c.get("user_provided_name") or c["name"]
            for c in api.get(f"/vhosts/{vhost}/connections").json()
        }
        found: dict[str, list[str]] = {}
        for consumer in api.get(f"/consumers/{vhost}").json():
            details = consumer.get("channel_details")
            if not isinstance(details, dict):  # its channel is closing: listed with no details
                continue
            if consumer.get("active", True) is active:
                peer = details["connection_name"]
                found.setdefault(consumer["queue"]["name"], []).append(names.get(peer, peer))
    return found


def queue_depths(rabbit_url: str) -> dict[str, tuple[int, int]]:
    """Queue name → (ready, unacknowledged), live from the queues (``rabbitmqctl``, read-only).

    The management API's figures are samples up to seconds old; these are not.
    """
    vhost = unquote(rabbit_url.rsplit("/", 1)[1]) or "/"
    done = subprocess.run(
        ["rabbitmqctl", "-q", "-p", vhost, "list_queues", "--no-table-headers",
         "name", "messages_ready", "messages_unacknowledged"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    rows = (line.split("\t") for line in done.stdout.splitlines() if line.strip())
    return {name: (int(ready), int(unacked)) for name, ready, unacked in rows}


def all_acknowledged(rabbit_url: str, queues: Iterable[str]) -> bool:
    """Whether ``queues`` hold nothing, ready or unacknowledged (live): every message they got
    was acknowledged, so none of them can be delivered again."""
    depths = queue_depths(rabbit_url)
    return all(depths.get(queue) == (0, 0) for queue in queues)

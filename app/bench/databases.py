"""Scratch databases for the benchmark: a fresh PostgreSQL database, a SecantusDB server."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
from pymongo import AsyncMongoClient


@asynccontextmanager
async def scratch_postgres(admin_url: str) -> AsyncIterator[str]:
    """A fresh database on the server of ``admin_url`` (postgresql://…), dropped afterwards."""
    name = f"jobtrail_bench_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    base = admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    try:
        yield f"{base}/{name}"
    finally:
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def secantus_server(binary: Path) -> AsyncIterator[str]:
    """Start SecantusDB (the MongoDB-speaking stand-in, not mongod) and yield a database URL."""
    storage = Path(tempfile.mkdtemp(prefix="jobtrail-bench-secantus-"))
    port = _free_port()
    proc = subprocess.Popen(  # noqa: S603, ASYNC220 - started once, before anything is timed
        [str(binary), "--host", "127.0.0.1", "--port", str(port), "--storage-path", str(storage)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"mongodb://127.0.0.1:{port}/bench?directConnection=true&retryWrites=false"
    try:
        await _wait_for_mongo(url)
        yield url
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 30)
        shutil.rmtree(storage, ignore_errors=True)


async def _wait_for_mongo(url: str) -> None:
    for _ in range(150):
        client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(
            url, serverSelectionTimeoutMS=500
        )
        try:
            await client.admin.command("ping")
            return
        except Exception:
            await asyncio.sleep(0.2)
        finally:
            await client.close()
    raise TimeoutError("SecantusDB did not start")


def mongo_database(url: str) -> str:
    """The same server with a database of its own for one run."""
    head, _, tail = url.partition("/bench")
    return f"{head}/bench_{uuid.uuid4().hex[:8]}{tail}"

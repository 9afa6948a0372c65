"""The benchmark run with this process's HTTP API, which its read-latency figures measure.

The benchmark (app/bench) sits below the entrypoints: the command hands it the API server.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from app.bench import runner
from app.bench.runner import BenchOptions, Figure
from app.bootstrap import Readers
from app.bootstrap.metrics import Metrics
from app.services.health import Health
from app.settings import Settings


async def run_bench(options: BenchOptions, progress: Callable[[str], None]) -> list[Figure]:
    """Every scenario (app/bench/runner.py), the API served without tokens."""
    return await runner.run_bench(options, progress, serve=_serve_open_api)


async def _serve_open_api(
    settings: Settings,
    readers: Readers,
    health: Health | None,
    metrics: Metrics,
    stop: asyncio.Event,
    /,
    *,
    sock: socket.socket,
) -> None:
    from app.entrypoints.api_auth import Tokens  # FastAPI and uvicorn: only when benching
    from app.entrypoints.api_server import serve_api

    await serve_api(settings, readers, health, metrics, stop, tokens=Tokens(), sock=sock)

"""Serving the HTTP API with uvicorn, in the caller's event loop.

``serve_api`` is how ``jobtrail api`` serves, and how ``jobtrail serve`` (and the demo) run the
API next to the tracker, in the same event loop: uvicorn is started on a socket bound by
``app.bootstrap.hosting.listen`` and leaves signal handling to its host. Importing this module
loads FastAPI and uvicorn: only the commands that serve do.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from app.bootstrap import Readers
from app.bootstrap.hosting import listen
from app.bootstrap.metrics import Metrics
from app.entrypoints.api import create_api
from app.entrypoints.api_auth import Tokens
from app.services.health import Health
from app.settings import Settings

log = logging.getLogger("jobtrail.api")

SHUTDOWN_GRACE_SECONDS = 10


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves SIGTERM / SIGINT to the process hosting it."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve_api(
    settings: Settings,
    readers: Readers,
    health: Health | None,
    metrics: Metrics,
    stop: asyncio.Event,
    *,
    tokens: Tokens | None = None,
    sock: socket.socket | None = None,
) -> None:
    """Serve the API in this event loop until ``stop`` is set, then close ``sock``.

    ``sock`` (from ``listen``) defaults to one on JOBTRAIL_HTTP_HOST:PORT. Raises ValueError,
    before serving, for invalid tokens or an address it cannot listen on.
    """
    api = create_api(settings, readers, health=health, metrics=metrics, tokens=tokens)
    if sock is None:
        sock = listen(settings.http_host, settings.http_port)
    server = _EmbeddedServer(
        uvicorn.Config(
            api, log_config=None, access_log=False, timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS
        )
    )
    serving = asyncio.create_task(server.serve(sockets=[sock]), name="jobtrail-api")
    stopping = asyncio.create_task(stop.wait(), name="jobtrail-api-stop")
    # The socket already listens: connections made from now on wait in its backlog.
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    log.info("jobtrail api listening", extra={"url": f"http://{shown}:{port}"})
    try:
        await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        server.should_exit = True
        await serving
        sock.close()

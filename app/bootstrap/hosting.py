"""Hosting the HTTP API beside a tracker: the listening socket, and the shape of the server.

The API is an entrypoint (app/entrypoints/api.py, served by uvicorn in
app/entrypoints/api_server.py). The demo and the benchmark sit below the entrypoints, so the
command that runs them hands them a server of this shape instead of their importing it.
"""

from __future__ import annotations

import asyncio
import socket
from typing import TYPE_CHECKING, Protocol

from app.bootstrap import Readers
from app.services.health import Health
from app.settings import Settings

if TYPE_CHECKING:
    from app.bootstrap.metrics import Metrics


class ApiServer(Protocol):
    """Serves the API in this event loop on ``sock`` until ``stop`` is set, then closes it."""

    async def __call__(
        self,
        settings: Settings,
        readers: Readers,
        health: Health | None,
        metrics: Metrics,
        stop: asyncio.Event,
        /,
        *,
        sock: socket.socket,
    ) -> None: ...


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: any free one); ValueError if impossible."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.create_server((host, port), family=family, backlog=2048)
        # Accepted sockets inherit this. Without it a kept-alive connection's responses wait for
        # delayed ACKs (~40 ms each): asyncio sets TCP_NODELAY only on sockets it creates itself.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    except OSError as exc:
        raise ValueError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc

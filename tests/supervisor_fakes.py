"""Stand-ins for the tracker that ``Supervisor`` runs in its worker processes.

Module-level coroutine functions, so a spawned worker can import them by name. Each takes what
``cli._serve`` takes (the settings and the supervisor's socket) and says it started by creating
``ready-<pid>`` in ``settings.data_dir``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket

from app.settings import Settings


def _ready(settings: Settings) -> None:
    (settings.data_dir / f"ready-{os.getpid()}").touch()


async def exits_at_once(settings: Settings, sock: socket.socket | None) -> int:
    """A tracker that cannot start (its stores refuse it, say): exit code 3 at once."""
    del settings, sock
    return 3


async def stops_on_sigterm(settings: Settings, sock: socket.socket | None) -> int:
    """A tracker that serves until SIGTERM, then exits 0."""
    del sock
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    _ready(settings)
    await stop.wait()
    return 0


async def ignores_sigterm(settings: Settings, sock: socket.socket | None) -> int:
    """A tracker stuck in its shutdown: SIGTERM does nothing."""
    del sock
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, lambda: None)
    _ready(settings)
    await asyncio.Event().wait()
    return 0

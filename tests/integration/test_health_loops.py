"""Health is fed by every loop: an outage seen only by the timer loop and the outbox relay
degrades it, and it clears once PostgreSQL is back, with no event passing through the batcher.

The outage is PostgreSQL's own: the test database stops accepting connections and its sessions
are ended (``ALLOW_CONNECTIONS false`` + ``pg_terminate_backend``), then it accepts them again.
Before each loop fed its own entry, only the batcher cleared the flag: /healthz stayed degraded
until the next event arrived.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field

from app.adapters.clock import SystemClock
from app.adapters.sql_log import SqlEventLog
from app.adapters.sql_schema import migrate
from app.adapters.sql_store import SqlProjectionStore
from app.domain.policy import Policy
from app.ports import OutboxMessage
from app.services.health import Health
from app.services.relay import OutboxRelay, TimerLoop
from app.services.tracking import Tracker
from tests.polling import until
from tests.servers import _pg_exec


class NoBroker:
    """The relay's publisher; nothing is pending, so nothing is published."""

    async def publish(self, message: OutboxMessage) -> None:
        raise AssertionError("nothing to publish")


@dataclass
class WatchedHealth(Health):
    """Health that counts each loop's successful passes (every pass reports ``recover``)."""

    passes: Counter[str] = field(default_factory=Counter)

    def recover(self, loop: str) -> None:
        self.passes[loop] += 1
        super().recover(loop)


async def _allow_connections(database: str, allow: bool) -> None:
    await _pg_exec(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS {str(allow).lower()}')
    if not allow:
        await _pg_exec(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = '{database}' AND pid <> pg_backend_pid()"
        )


async def test_an_outage_seen_by_the_timer_loop_and_relay_clears_without_any_event(
    pg_url: str,
) -> None:
    await migrate(pg_url)
    database = pg_url.rsplit("/", 1)[1]
    log, store = SqlEventLog(pg_url), SqlProjectionStore(pg_url)
    tracker = Tracker(log, store, Policy.from_toml(""), SystemClock())
    health = WatchedHealth()
    loops = [
        TimerLoop(tracker, health, interval=0.05),
        OutboxRelay(store, NoBroker(), SystemClock(), idle_wait=0.05, health=health),  # type: ignore[arg-type]
    ]
    tasks = [asyncio.create_task(loop.run()) for loop in loops]
    try:
        await until(lambda: min(health.passes[n] for n in ("timers", "relay")) >= 1, "a pass each")
        assert health.ok, health.degraded_reason
        await _allow_connections(database, False)
        await until(lambda: set(health.reasons) == {"timers", "relay"}, "both loops to see it")
        assert not health.ok and "store unavailable" in (health.degraded_reason or "")
        await _allow_connections(database, True)
        await until(lambda: health.ok, "the loops to recover on their own")
    finally:
        await _allow_connections(database, True)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await log.close()
        await store.close()
    assert health.degraded_reason is None

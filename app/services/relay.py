"""Background loops: the timer loop (due deadlines) and the outbox relay (confirmed publishes)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from app.ports import Clock, ProjectionStore, Publisher, PublishFailed, StoreUnavailable
from app.services.ingest import Health
from app.services.tracking import Tracker

log = logging.getLogger("jobtrail.relay")


@dataclass
class TimerLoop:
    """Fires due lease, TTL and cooldown deadlines through the tracker, within ``interval``."""

    tracker: Tracker
    health: Health
    interval: float = 0.25

    async def run(self) -> None:
        while True:
            try:
                fired = await self.tracker.fire_due_timers()
            except StoreUnavailable as exc:
                self.health.degraded_reason = f"store unavailable: {exc}"
                log.warning("timer loop: store unavailable: %s", exc)
                await asyncio.sleep(1.0)
                continue
            except Exception:  # a bug must not end the loop: log it, back off, go on
                log.exception("timer loop failed; retrying")
                await asyncio.sleep(1.0)
                continue
            if fired == 0:
                await asyncio.sleep(self.interval)


@dataclass
class OutboxRelay:
    """Publishes committed outbox rows with publisher confirms, then marks them published.

    At-least-once: a crash between the confirm and the mark republishes the same message, which
    carries its event id (``message_id`` and ``x-jobtrail-event-id``) so consumers can dedupe.
    """

    store: ProjectionStore
    publisher: Publisher
    clock: Clock
    batch: int = 200
    idle_wait: float = 0.5
    _wake: asyncio.Event = field(default_factory=asyncio.Event)

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        delay = 0.2
        while True:
            try:
                sent = await self.drain_once()
                delay = 0.2
            except (StoreUnavailable, PublishFailed) as exc:
                log.warning("outbox relay: retrying in %.1fs: %s", delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            except Exception:  # a bug must not end the relay: log it, back off, go on
                log.exception("outbox relay failed; retrying in %.1fs", delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            if sent == 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.idle_wait)

    async def drain_once(self) -> int:
        """Publish one batch of pending messages; returns how many were published."""
        pending = await self.store.pending_outbox(self.batch)
        done: list[str] = []
        try:
            for message in pending:
                await self.publisher.publish(message)
                done.append(message.event_id)
        finally:
            if done:
                await self.store.mark_published(done, self.clock.now())
        return len(done)

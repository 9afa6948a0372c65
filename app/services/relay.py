"""Background loops: the timer loop (due deadlines) and the outbox relay (confirmed publishes)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from app.ports import (
    Clock,
    OutboxMessage,
    ProjectionStore,
    Publisher,
    PublishFailed,
    StoreUnavailable,
)
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
    max_failures: int = 3
    """Consecutive failed publishes that end a pass: the broker itself is in trouble."""
    park_initial: float = 1.0
    park_max: float = 60.0
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _parked: dict[str, tuple[float, float]] = field(default_factory=dict)
    """event_id -> (monotonic time of its next attempt, its current delay)."""

    @property
    def parked(self) -> int:
        """Messages set aside after the broker refused them while it took others."""
        return len(self._parked)

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
        """Publish one batch of pending messages; returns how many were published.

        A message the broker refuses while it takes others (say, a queue it will not declare)
        is parked, retried with backoff, and holds back only its own job's later messages.
        When publishes keep failing one after another the broker itself is in trouble: the pass
        ends with PublishFailed and the caller backs off.
        """
        now = asyncio.get_running_loop().time()
        wanted = self.batch + len(self._parked)
        pending = await self.store.pending_outbox(wanted)
        if len(pending) < wanted:  # every pending row is here: forget rows published elsewhere
            ids = {m.event_id for m in pending}
            self._parked = {k: v for k, v in self._parked.items() if k in ids}
        held_jobs: set[str] = set()  # a job's messages go out in order, or not at all
        done: list[str] = []
        streak: list[tuple[OutboxMessage, PublishFailed]] = []  # failures since the last success
        try:
            for message in pending:
                if message.job_id in held_jobs:
                    continue
                parked = self._parked.get(message.event_id)
                if parked is not None and parked[0] > now:
                    held_jobs.add(message.job_id)
                    continue
                try:
                    await self.publisher.publish(message)
                except PublishFailed as exc:
                    held_jobs.add(message.job_id)
                    streak.append((message, exc))
                    if len(streak) >= self.max_failures:
                        raise
                    continue
                self._park_all(streak, now)  # the broker takes others: those were refused
                streak = []
                self._parked.pop(message.event_id, None)
                done.append(message.event_id)
            if streak and not done:
                raise streak[-1][1]
            self._park_all(streak, now)
        finally:
            if done:
                await self.store.mark_published(done, self.clock.now())
        return len(done)

    def _park_all(self, failed: list[tuple[OutboxMessage, PublishFailed]], now: float) -> None:
        for message, exc in failed:
            self._park(message, exc, now)

    def _park(self, message: OutboxMessage, exc: PublishFailed, now: float) -> None:
        _, delay = self._parked.get(message.event_id, (now, self.park_initial / 2))
        delay = min(delay * 2, self.park_max)
        self._parked[message.event_id] = (now + delay, delay)
        log.warning(
            "outbox relay: %s for job %s refused, retrying in %.0fs: %s",
            message.event_id,
            message.job_id,
            delay,
            exc,
        )

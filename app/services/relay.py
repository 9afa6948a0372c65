"""Background loops: the timer loop (due deadlines) and the outbox relay (confirmed publishes)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from app.backoff import Backoff
from app.ports import (
    Clock,
    OutboxMessage,
    ProjectionStore,
    Publisher,
    PublishFailed,
    StoreUnavailable,
)
from app.services.health import Health
from app.services.tracking import Tracker

log = logging.getLogger("jobtrail.relay")

TIMER_RETRY = Backoff(1.0, 1.0)
"""The timer loop's pause after a failed pass: a steady second (its passes are cheap)."""
RELAY_RETRY = Backoff(0.2, 5.0)
"""The relay's pause after a failed pass, doubling while the outage lasts."""


@dataclass
class TimerLoop:
    """Fires due lease, TTL and cooldown deadlines through the tracker.

    When nothing is due it sleeps until the next timer can be claimed, but never longer than
    ``interval``: timers that events set meanwhile (or other trackers release) are seen within
    it. A deadline is thus fired as it passes, not up to an interval later.
    """

    tracker: Tracker
    health: Health
    interval: float = 0.25
    min_pause: float = 0.001
    """The shortest idle sleep (clock differences must not make the loop spin)."""

    async def run(self) -> None:
        waits = TIMER_RETRY.waits()
        while True:
            try:
                fired = await self.tracker.fire_due_timers()
                pause = await self.idle_pause() if fired == 0 else 0.0
                self.health.recover("timers")
                waits.reset()
            except StoreUnavailable as exc:
                self.health.degrade("timers", f"store unavailable: {exc}")
                log.warning("timer loop: store unavailable: %s", exc)
                await waits.wait()
                continue
            except Exception:  # a bug must not end the loop: log it, back off, go on
                log.exception("timer loop failed; retrying")
                await waits.wait()
                continue
            if pause:
                await asyncio.sleep(pause)

    async def idle_pause(self) -> float:
        """Seconds until the next timer can be claimed, within ``[min_pause, interval]``."""
        now = self.tracker.clock.now()
        at = await self.tracker.store.next_claimable_at(now)
        if at is None:
            return self.interval
        wait = (at - now).total_seconds()
        return min(max(wait, self.min_pause), self.interval)


@dataclass
class OutboxRelay:
    """Claims committed outbox rows, publishes them with publisher confirms, marks them published.

    Several trackers share one outbox: each pass claims rows for ``owner`` (whole jobs, which no
    other relay holds) for ``lease`` seconds, and releases what it did not publish. Publishes
    start only in the first half of the lease, so one still in flight when that half ends has
    the other half to be confirmed before another tracker may take its row over.

    At-least-once: a crash between the confirm and the mark, or a lease that ends under a
    publish slower than half of it, republishes the same message, which carries its event id
    (``message_id`` and ``x-jobtrail-event-id``) so consumers can dedupe (docs/protocol.md).
    """

    store: ProjectionStore
    publisher: Publisher
    clock: Clock
    owner: str = field(default_factory=lambda: f"relay-{uuid.uuid4().hex}")
    """Whose claims these are: the tracker's member name (app/bootstrap/__init__.py)."""
    lease: float = 30.0
    """Seconds a claim holds its rows (``JOBTRAIL_OUTBOX_LEASE_S``)."""
    batch: int = 500
    idle_wait: float = 0.5
    max_failures: int = 3
    """Consecutive failed publishes that end a pass: the broker itself is in trouble."""
    park_initial: float = 1.0
    park_max: float = 60.0
    health: Health | None = None
    """Told when a pass fails for an outage (store or broker) and when one succeeds again."""
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _parked: dict[str, tuple[datetime, float]] = field(default_factory=dict)
    """event_id -> (clock time of its next attempt, its current delay in seconds)."""
    _unmarked: set[str] = field(default_factory=set)
    """Confirmed publishes whose mark has not committed yet (the store failed): marked first."""
    _publish_until: datetime | None = None

    @property
    def parked(self) -> int:
        """Messages set aside after the broker refused them while it took others."""
        return len(self._parked)

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        waits = RELAY_RETRY.waits()
        while True:
            try:
                sent = await self.drain_once()
                waits.reset()
                if self.health is not None:
                    self.health.recover("relay")
            except (StoreUnavailable, PublishFailed) as exc:
                if self.health is not None:
                    self.health.degrade("relay", f"{type(exc).__name__}: {exc}")
                log.warning("outbox relay: retrying in %.1fs: %s", waits.delay, exc)
                await waits.wait()
                continue
            except Exception:  # a bug must not end the relay: log it, back off, go on
                log.exception("outbox relay failed; retrying in %.1fs", waits.delay)
                await waits.wait()
                continue
            if sent == 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.idle_wait)

    async def drain_once(self) -> int:
        """Claim, publish and mark one batch of messages; returns how many were published.

        The jobs' messages go out concurrently (confirms overlap: about 5 x the rate of one
        publish at a time on loopback), each job's in order, a job stopping at its first
        failure. A failure among concurrent publishes may be another message's doing (a
        refusal that closes the channel fails its neighbours), so the jobs that failed are
        tried once more one message at a time: a message the broker refuses then while it takes
        others (say, a queue it will not declare) is parked, retried with backoff, and holds
        back only its own job's later messages. When publishes keep failing one after another
        the broker itself is in trouble: the pass ends with PublishFailed and the caller backs
        off. Whatever was not published is released for any tracker to claim.
        """
        await self._mark_unmarked()
        now = self.clock.now()
        wanted = self.batch + len(self._parked)
        lease = timedelta(seconds=self.lease)
        claimed = await self.store.claim_outbox(self.owner, wanted, now, lease)
        self._publish_until = now + lease / 2
        ids = {m.event_id for m in claimed}
        # Forget rows published (or held) elsewhere once they were due again anyway.
        self._parked = {k: v for k, v in self._parked.items() if k in ids or v[0] > now}
        jobs: dict[str, list[OutboxMessage]] = {}
        for message in claimed:
            jobs.setdefault(message.job_id, []).append(message)
        done: list[str] = []
        try:
            left = await asyncio.gather(*(self._publish_job(m, now, done) for m in jobs.values()))
            _report_unconfirmed(left)
            await self._publish_one_by_one([m for rest in left for m in rest], now, done)
        finally:
            self._unmarked.update(done)
            await self._mark_unmarked()
            if unpublished := sorted(ids.difference(done)):
                await self.store.release_outbox(self.owner, unpublished)
        return len(done)

    async def _mark_unmarked(self) -> None:
        if self._unmarked:
            await self.store.mark_published(sorted(self._unmarked), self.clock.now())
            self._unmarked.clear()

    def _lease_spent(self) -> bool:
        """Whether this pass may start no more publishes (see the class docstring)."""
        return self._publish_until is not None and self.clock.now() >= self._publish_until

    async def _publish_job(
        self, messages: list[OutboxMessage], now: datetime, done: list[str]
    ) -> list[OutboxMessage]:
        """Publish one job's messages in order; returns those left from its first failure on."""
        for n, message in enumerate(messages):
            parked = self._parked.get(message.event_id)
            if (parked is not None and parked[0] > now) or self._lease_spent():
                return []  # the job waits behind its parked message, or for the next claim
            try:
                await self.publisher.publish(message)
            except PublishFailed:
                return messages[n:]
            self._parked.pop(message.event_id, None)
            done.append(message.event_id)
        return []

    async def _publish_one_by_one(
        self, pending: list[OutboxMessage], now: datetime, done: list[str]
    ) -> None:
        held_jobs: set[str] = set()  # a job's messages go out in order, or not at all
        streak: list[tuple[OutboxMessage, PublishFailed]] = []  # failures since the last success
        for message in pending:
            if self._lease_spent():
                break
            if message.job_id in held_jobs:
                continue
            try:
                await self.publisher.publish(message)
            except PublishFailed as exc:
                held_jobs.add(message.job_id)
                streak.append((message, exc))
                if len(streak) >= self.max_failures:
                    _report_unconfirmed([[m] for m, _ in streak])
                    raise
                continue
            self._park_all(streak, now)  # the broker takes others: those were refused
            streak = []
            self._parked.pop(message.event_id, None)
            done.append(message.event_id)
        if streak and not done:  # nothing at all went out in this pass
            _report_unconfirmed([[m] for m, _ in streak])
            raise streak[-1][1]
        self._park_all(streak, now)

    def _park_all(self, failed: list[tuple[OutboxMessage, PublishFailed]], now: datetime) -> None:
        for message, exc in failed:
            self._park(message, exc, now)

    def _park(self, message: OutboxMessage, exc: PublishFailed, now: datetime) -> None:
        backoff = Backoff(self.park_initial, self.park_max)
        earlier = self._parked.get(message.event_id)
        delay = backoff.initial if earlier is None else backoff.after(earlier[1])
        self._parked[message.event_id] = (now + timedelta(seconds=delay), delay)
        log.warning(
            "outbox relay: %s for job %s refused, retrying in %.0fs: %s",
            message.event_id,
            message.job_id,
            delay,
            exc,
        )


def _report_unconfirmed(left: list[list[OutboxMessage]]) -> None:
    """One line for the publishes of a pass whose confirm did not come.

    Each may have landed all the same: published again, its copy carries the same message id
    (the decision's event id), which is how a node recognises the repeat (docs/protocol.md).
    """
    failed = [rest[0].event_id for rest in left if rest]
    if failed:
        log.warning(
            "outbox relay: %d publishes not confirmed; publishing them again",
            len(failed),
            extra={"event_ids": failed},
        )

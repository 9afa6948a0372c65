"""The partition ring's barrier: per-job order survives RabbitMQ losing (or reordering) its ring.

RabbitMQ's consistent-hash exchange maps a job to a partition through a ring of buckets numbered
in the order the partition queues were bound. RabbitMQ 3.x rebuilds a durable ring at boot in
whatever order its bindings come back, so after a broker restart about half the jobs hash to
another partition: their older events wait in the old partition queue while the newer ones are
consumed from the new one, and a job's history comes out of order.

So the ring is transient and rebuilt by a tracker after every broker start, always in the same
order (hence the same routing). Until then ``jobtrail.events`` sends everything to its alternate
exchange, the ``jobtrail.unrouted`` queue. The tracker that holds the leader lock then:

1. opens a barrier epoch in the SQL store;
2. appends a marker of that epoch to every partition queue, behind the events routed by the old
   ring, and builds the ring: later events queue behind the markers;
3. waits until every partition reached its marker: each partition's consumer records the
   events before the marker, reports its arrival and pauses, holding what comes after;
4. records everything in ``jobtrail.unrouted`` (published between the broker start and step 2,
   so after every event before the markers and before every event behind them), then opens the
   epoch: the partitions go on.

A leader that dies mid-way leaves the epoch unopened; a paused partition's tracker takes the lock
once ``takeover_after`` seconds passed on its clock (however many polls that took) and runs the
same steps again for the same epoch (every step is idempotent, and a marker of an opened epoch is
passed straight through).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

from app.backoff import Backoff
from app.ports import BarrierStore, Clock, PublishFailed, RingBroker, StoreUnavailable
from app.services.batcher import Batcher
from app.services.health import Health
from app.services.ingest import Ingestor

log = logging.getLogger("jobtrail.ring")

UNROUTED_BATCH = 256

T = TypeVar("T")


@dataclass
class RingKeeper:
    """Keeps the partition ring built and runs its barrier (see the module docstring)."""

    store: BarrierStore
    broker: RingBroker
    ingestor: Ingestor
    batcher: Batcher
    clock: Clock
    partitions: int
    poll: float = 0.1
    takeover_after: float = 10.0
    """Seconds on ``clock`` a paused partition waits for its barrier before leading it itself."""
    max_backoff: float = 5.0
    health: Health | None = None
    """Told when the ring keeper meets an outage and when it gets past it."""
    barriers: int = 0
    """Barriers this tracker led to the end (for metrics and tests)."""
    _ensuring: asyncio.Task[None] | None = None
    _leading: asyncio.Task[bool] | None = None

    def ensure_soon(self) -> None:
        """Check the ring in the background (at start and after each reconnection)."""
        if self._ensuring is None or self._ensuring.done():
            self._ensuring = asyncio.create_task(self._ensure(), name="jobtrail-ring")

    async def stop(self) -> None:
        tasks = [t for t in (self._ensuring, self._leading) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _retry(self) -> Backoff:
        """After an outage: wait ``poll``, doubling up to ``max_backoff``."""
        return Backoff(self.poll, self.max_backoff)

    async def _ensure(self) -> None:
        waits = self._retry().waits()
        leading = False  # once the ring was missing, lead until the barrier is done
        while True:
            try:
                if not leading:
                    if await self.broker.ring_exists():
                        self._recover()
                        return
                    leading = True
                await self._lead_once()  # False: another tracker leads (or will take over)
                self._recover()
                return
            except (PublishFailed, StoreUnavailable) as exc:
                self._degrade(f"{type(exc).__name__}: {exc}")
                log.warning("ring: cannot rebuild yet, retrying in %.1fs: %s", waits.delay, exc)
            except Exception:  # a bug must not leave the ring unbuilt: log, back off, go on
                log.exception("ring: rebuilding failed; retrying")
            await waits.wait()

    async def _lead_once(self) -> bool:
        """Run the barrier if this tracker gets the leader lock; False if another holds it."""
        if self._leading is None or self._leading.done():
            self._leading = asyncio.create_task(self.lead(), name="jobtrail-ring-leader")
        return await asyncio.shield(self._leading)

    async def lead(self) -> bool:
        """Steps 1-4 of the barrier under the leader lock; False if someone else holds it."""
        async with self.broker.leadership() as leader:
            if not leader:
                return False
            epoch = await self.store.begin_barrier(self.clock.now())
            log.info("ring: rebuilding behind barrier %s", epoch)
            await self.broker.place_markers(epoch)
            await self.broker.build_ring()
            everyone = set(range(self.partitions))
            arrivals = partial(self.store.barrier_arrivals, epoch)
            # Polled: the arrivals are written by the trackers of other processes too.
            while not everyone <= await self._until_done(arrivals):  # noqa: ASYNC110
                await asyncio.sleep(self.poll)
            drained = await self._record_unrouted()
            await self.store.open_barrier(epoch, self.clock.now())
            self.barriers += 1
            log.info("ring: barrier %s opened after %d unrouted events", epoch, drained)
            return True

    async def _record_unrouted(self) -> int:
        count = 0
        while batch := await self.broker.take_unrouted(UNROUTED_BATCH):
            # Tasks start in creation order and each hands its event to the batcher before its
            # first await, so the batch keeps the queue's order.
            # A failure ends the leadership: the broker then hands the batch to the next leader.
            await asyncio.gather(
                *[asyncio.create_task(self.ingestor.accept(m.body, keyed=m.keyed)) for m in batch]
            )
            await self.broker.ack_unrouted(batch)
            count += len(batch)
        return count

    async def arrive(self, partition: int, epoch: str) -> None:
        """A partition's consumer met the marker of ``epoch``: report, pause until it opens.

        If the tracker stops meanwhile (or recording the events before the marker fails, a bug),
        the events held behind the marker are abandoned, never recorded out of turn: the broker
        delivers them again, after the marker, once this consumer is gone.
        """
        self.ingestor.pause(partition)  # before any await: the events behind the marker wait
        try:
            await self._until_opened(partition, epoch)
        except asyncio.CancelledError:
            self.ingestor.abandon(partition)
            raise
        except Exception:  # a bug: stay paused (safe) rather than record out of turn
            log.exception(
                "ring: partition %d cannot pass barrier %s; it stays paused until restart",
                partition,
                epoch,
            )
            try:
                await asyncio.get_running_loop().create_future()  # until the tracker stops
            finally:
                self.ingestor.abandon(partition)
        self.ingestor.resume(partition)

    async def _until_opened(self, partition: int, epoch: str) -> None:
        opened = partial(self.store.barrier_opened, epoch)
        if await self._until_done(opened):
            return  # a marker of a barrier that is over (placed again by a new leader)
        await self.batcher.flush()  # the events before the marker are recorded
        await self._until_done(
            lambda: self.store.barrier_arrive(epoch, partition, self.clock.now())
        )
        # Elapsed time on the keeper's clock, not a count of polls: a slow store or a busy
        # loop stretches every poll, and the take-over must still come ``takeover_after`` on.
        since = self.clock.now()
        while not await self._until_done(opened):
            await asyncio.sleep(self.poll)
            if (self.clock.now() - since).total_seconds() >= self.takeover_after:
                since = self.clock.now()
                self._try_takeover(epoch)

    def _try_takeover(self, epoch: str) -> None:
        """The leader seems gone: run the barrier here if its lock is free."""
        if self._leading is not None and not self._leading.done():
            return
        log.warning(
            "ring: barrier %s still closed after %.0fs; trying to lead it",
            epoch,
            self.takeover_after,
        )
        self._leading = asyncio.create_task(self._take_over(epoch), name="jobtrail-ring-leader")
        self._leading.add_done_callback(_log_failure)

    async def _take_over(self, epoch: str) -> bool:
        """Lead unless ``epoch`` opened meanwhile: another partition's take-over may have just
        opened it, and leading again would begin a new barrier nobody asked for."""
        if await self._until_done(partial(self.store.barrier_opened, epoch)):
            return False
        return await self.lead()

    async def _until_done(self, attempt: Callable[[], Awaitable[T]]) -> T:
        waits = self._retry().waits()
        while True:
            try:
                result = await attempt()
            except StoreUnavailable as exc:
                self._degrade(f"store unavailable: {exc}")
                log.warning("ring: store unavailable, retrying in %.1fs: %s", waits.delay, exc)
                await waits.wait()
                continue
            self._recover()
            return result

    def _degrade(self, reason: str) -> None:
        if self.health is not None:
            self.health.degrade("ring", reason)

    def _recover(self) -> None:
        if self.health is not None:
            self.health.recover("ring")


def _log_failure(task: asyncio.Task[bool]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("ring: taking over the barrier failed: %r", task.exception())

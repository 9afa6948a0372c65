"""Sharing the partition queues among the trackers of a deployment.

Every tracker heartbeats into the shared SQL store (``Membership``) and computes, from the same
list of live trackers, the same assignment of partitions (``share``): each tracker consumes only
its share. When the list changes (a tracker starts, stops or stops beating for ``ttl`` seconds),
each tracker releases what is no longer its own and subscribes to what now is.

A partition changes hands the way a crash hands it over, which RabbitMQ keeps in order: the old
owner pauses it, lets every delivery already handed on be recorded and acknowledged, then closes
its connection to the queue, which returns the held deliveries to the queue in order. The new
owner may subscribe before that: single active consumer keeps it waiting until the old one is
gone, so two trackers never consume a partition at once even while their views of the
membership disagree. A tracker that dies holds its partitions until RabbitMQ notices (the
connection drops: its deliveries return) and the others stop seeing its heartbeat (``ttl``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from app.ports import Clock, Membership, PartitionConsumers, StoreUnavailable
from app.services.ingest import Ingestor

log = logging.getLogger("jobtrail.partitions")

Sleep = Callable[[float], Awaitable[None]]
"""Waits that many seconds (``asyncio.sleep``; a test's clock that it moves itself)."""


def share(partitions: int, members: Sequence[str]) -> dict[str, frozenset[int]]:
    """Every partition to exactly one member; shares differ by at most one partition.

    Deterministic in the set of members (not their order), so every tracker computes the same
    answer, and mostly stable when a member comes or goes: every (member, partition) pair gets
    a pseudo-random rank (rendezvous hashing) and pairs are granted best first while the
    partition is free and the member's share is not full.
    """
    names = sorted(set(members))
    if not names:
        return {}
    base, extra = divmod(partitions, len(names))
    room = {name: base + (1 if i < extra else 0) for i, name in enumerate(names)}
    ranked = sorted(
        ((_weight(name, p), name, p) for name in names for p in range(partitions)), reverse=True
    )
    owned: dict[str, set[int]] = {name: set() for name in names}
    free = set(range(partitions))
    for _, name, partition in ranked:
        if partition in free and len(owned[name]) < room[name]:
            owned[name].add(partition)
            free.discard(partition)
    return {name: frozenset(parts) for name, parts in owned.items()}


def _weight(member: str, partition: int) -> bytes:
    # A stable hash: Python's hash() of a str differs from process to process.
    return hashlib.blake2b(f"{member}/{partition}".encode(), digest_size=8).digest()


@dataclass
class PartitionCoordinator:
    """Keeps this tracker consuming exactly its share of the partitions (module docstring).

    Every wait is on ``sleep`` and every instant from ``clock`` (a test passes a clock it moves
    itself); every wait on something else (the store, the broker, deliveries in flight) is
    bounded, so ``stop`` returns in bounded time whatever state it finds.
    """

    membership: Membership
    consumers: PartitionConsumers
    ingestor: Ingestor
    partitions: int
    member: str
    clock: Clock
    sleep: Sleep = asyncio.sleep
    """Waits that many seconds on ``clock``."""
    ttl: float = 5.0
    """Seconds without a heartbeat after which a tracker counts as gone."""
    beat_every: float = 1.0
    stop_grace: float = 3.0
    """On stop, how long deliveries in flight may take to be recorded (all partitions at once)."""
    io_timeout: float = 2.0
    """On stop, how long closing the partitions' connections, or leaving, may take."""
    live: list[str] = field(default_factory=list)
    """The live trackers as last seen (the last successful heartbeat)."""
    moves: int = 0
    """Partitions released to another tracker (for metrics and tests)."""
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _last_logged: tuple[frozenset[int], int] | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def owned(self) -> set[int]:
        return self.consumers.consuming()

    async def start(self) -> None:
        """Take this tracker's share (or nothing yet if the store is down), then keep it.

        It beats once and waits a beat before taking anything, so that trackers started
        together see each other first instead of taking everything and handing it over again.
        """
        try:
            await self._beat()
            await self.sleep(self.beat_every)
            await self._beat()
        except StoreUnavailable as exc:
            log.warning("partitions: cannot see the other trackers yet: %s", exc)
        else:
            await self.rebalance()
        self._tasks = [
            asyncio.create_task(self._beating(), name="jobtrail-membership"),
            asyncio.create_task(self._balancing(), name="jobtrail-partitions"),
        ]

    async def stop(self) -> None:
        """Stop consuming everything and leave, within about ``stop_grace + 3 * io_timeout``.

        Whatever it finds (a partition mid-release, held deliveries, a store or broker that
        hangs), deliveries not recorded by then are abandoned: neither recorded here nor
        acknowledged, their messages go back to the queue in order.
        """
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks and not await self._within(self.io_timeout, asyncio.wait(tasks)):
            log.warning("partitions: a loop ignored its cancellation; stopping without it")
        await self._release_all()
        if not await self._within(self.io_timeout, self._leave()):
            log.warning("partitions: leaving timed out (others wait %.0fs)", self.ttl)

    async def _release_all(self) -> None:
        """``_release`` for every partition at once, each wait bounded (stopping)."""
        owned = sorted(self.owned())
        for partition in owned:
            self.ingestor.pause(partition)
        settled = asyncio.gather(*(self.ingestor.settled(p) for p in owned))
        if not await self._within(self.stop_grace, settled):
            log.warning("partitions: deliveries still in flight after %.1fs", self.stop_grace)
        released = asyncio.gather(*(self._close(p) for p in owned))
        if not await self._within(self.io_timeout, released):
            log.warning("partitions: closing %s timed out", owned)
        for partition in owned:
            self.ingestor.abandon(partition)  # the broker has them back, or will at exit

    async def _close(self, partition: int) -> None:
        try:
            await self.consumers.release(partition)
        except Exception:  # stopping anyway: the connection goes when the process does
            log.exception("partitions: releasing partition %d failed", partition)

    async def _leave(self) -> None:
        try:
            await self.membership.leave(self.member)
        except StoreUnavailable as exc:
            log.warning("partitions: could not leave (others wait %.0fs): %s", self.ttl, exc)

    async def _within(self, seconds: float, work: Awaitable[object]) -> bool:
        """Await ``work`` for up to ``seconds`` on the clock; False if it was cut short.

        Work cut short is cancelled but not waited for: what ignores its cancellation (a
        driver call stuck in a dead connection) must not hold up a stop. Its errors propagate.
        """
        task = asyncio.ensure_future(work)
        timer = asyncio.ensure_future(self.sleep(seconds))
        try:
            await asyncio.wait((task, timer), return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
            cut_short = not task.done()
            if cut_short:
                task.cancel()
                task.add_done_callback(_forget)
        if cut_short:
            return False
        task.result()
        return True

    async def rebalance(self) -> None:
        """Release what is no longer this tracker's share, then subscribe to the rest of it."""
        mine = share(self.partitions, self.live).get(self.member, frozenset())
        had = self.owned()
        for partition in sorted(had - mine):
            await self._release(partition)
        for partition in sorted(mine - self.owned()):
            await self.consumers.consume(partition)
        seen = (frozenset(self.owned()), len(self.live))
        if seen != self._last_logged:  # what it consumes, or how many share, changed
            self._last_logged = seen
            log.info(
                "partitions: consuming %s of %d (%d trackers live)",
                sorted(self.owned()),
                self.partitions,
                len(self.live),
            )

    async def _release(self, partition: int) -> None:
        """Hand ``partition`` over once every delivery before the held ones is recorded."""
        if self.ingestor.paused(partition):
            return  # at a ring barrier: it moves once the barrier is over
        self.ingestor.pause(partition)
        try:
            await self.ingestor.settled(partition)  # recorded and acknowledged, but the held
            await self.consumers.release(partition)
        except BaseException:
            if partition in self.owned():
                self.ingestor.resume(partition)  # still consuming: go on as before
            raise
        self.ingestor.abandon(partition)  # the broker has them back, in order
        self.moves += 1

    async def _beat(self) -> None:
        live = await self.membership.beat(self.member, self.ttl)
        if live != self.live:
            self.live = live
            self._wake.set()

    async def _beating(self) -> None:
        """Beat every ``beat_every`` on the clock, a slow beat not delaying the next ones."""
        due = self.clock.now()
        beats = 0
        while True:
            due = max(due + timedelta(seconds=self.beat_every), self.clock.now())
            await self.sleep((due - self.clock.now()).total_seconds())
            try:
                if not await self._within(self.ttl, self._beat()):
                    log.warning("partitions: heartbeat took over %.1fs; abandoned", self.ttl)
            except StoreUnavailable as exc:
                log.warning("partitions: heartbeat failed: %s", exc)
            except Exception:
                log.exception("partitions: heartbeat failed")
            beats += 1
            if beats % 3 == 0:  # a release skipped at a ring barrier is tried again
                self._wake.set()

    async def _balancing(self) -> None:
        # A plain wait: asyncio.wait_for (Python 3.11) swallows a cancellation that arrives
        # as the event is set, which left stop() waiting for this loop forever (issue 10).
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.rebalance()
            except Exception:
                log.exception("partitions: rebalancing failed; trying again")


def _forget(task: asyncio.Future[object]) -> None:
    # A task cut short by a bound: retrieve its outcome so asyncio logs nothing at exit.
    if not task.cancelled():
        task.exception()

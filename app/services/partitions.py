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
import contextlib
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from app.ports import Membership, PartitionConsumers, StoreUnavailable
from app.services.ingest import Ingestor

log = logging.getLogger("jobtrail.partitions")


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
    """Keeps this tracker consuming exactly its share of the partitions (module docstring)."""

    membership: Membership
    consumers: PartitionConsumers
    ingestor: Ingestor
    partitions: int
    member: str
    ttl: float = 5.0
    """Seconds without a heartbeat after which a tracker counts as gone."""
    beat_every: float = 1.0
    stop_grace: float = 10.0
    """On stop, how long a partition's deliveries in flight may take to be recorded."""
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
            await asyncio.sleep(self.beat_every)
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
        """Stop consuming everything (held deliveries go back in order) and leave."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        for partition in sorted(self.owned()):
            await self._release(partition, wait_barrier=False)
        try:
            await self.membership.leave(self.member)
        except StoreUnavailable as exc:
            log.warning("partitions: could not leave (others wait %.0fs): %s", self.ttl, exc)

    async def rebalance(self) -> None:
        """Release what is no longer this tracker's share, then subscribe to the rest of it."""
        mine = share(self.partitions, self.live).get(self.member, frozenset())
        had = self.owned()
        for partition in sorted(had - mine):
            await self._release(partition, wait_barrier=True)
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

    async def _release(self, partition: int, *, wait_barrier: bool) -> None:
        """Hand ``partition`` over; ``wait_barrier`` False when stopping (no waiting forever)."""
        if wait_barrier and self.ingestor.paused(partition):
            return  # at a ring barrier: it moves once the barrier is over
        self.ingestor.pause(partition)
        try:
            if wait_barrier:
                await self.ingestor.settled(partition)  # recorded and acknowledged, but the held
            else:  # stopping: a store outage must not hold the stop up (redeliveries are known)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.stop_grace):
                        await self.ingestor.settled(partition)
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
        while True:
            await asyncio.sleep(self.beat_every)
            try:
                await self._beat()
            except StoreUnavailable as exc:
                log.warning("partitions: heartbeat failed: %s", exc)
            except Exception:
                log.exception("partitions: heartbeat failed")

    async def _balancing(self) -> None:
        while True:
            # Also every few beats: a release skipped at a ring barrier is tried again.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.beat_every * 3)
            self._wake.clear()
            try:
                await self.rebalance()
            except Exception:
                log.exception("partitions: rebalancing failed; trying again")

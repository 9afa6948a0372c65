"""An in-memory RingBroker, held to the same contract tests as RabbitRing (tests/contract)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence

from app.ports import PublishFailed, Unrouted


class MemoryRingBroker:
    """Partition queues as lists of markers (epochs); the unrouted queue as a list of bodies."""

    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        self.ring = False
        self.markers: list[list[str]] = [[] for _ in range(partitions)]
        self.unrouted: list[tuple[bytes, bool]] = []
        self.fail = False
        self._locked = False
        self._leading = False
        self._taken: list[Unrouted] = []
        self._tags = 0

    def _check(self) -> None:
        if self.fail:
            raise PublishFailed("broker down")

    async def ring_exists(self) -> bool:
        self._check()
        return self.ring

    @contextlib.asynccontextmanager
    async def leadership(self) -> AsyncIterator[bool]:
        self._check()
        if self._locked:
            yield False
            return
        self._locked = self._leading = True
        try:
            yield True
        finally:
            self._locked = self._leading = False
            # Like a closed channel: what was taken and not settled goes back, in order.
            self.unrouted[:0] = [(m.body, m.keyed) for m in self._taken]
            self._taken = []

    def _need_lead(self) -> None:
        self._check()
        if not self._leading:
            raise PublishFailed("the ring's barrier steps need the leader lock")

    async def place_markers(self, epoch: str) -> None:
        self._need_lead()
        for queue in self.markers:
            queue.append(epoch)

    async def build_ring(self) -> None:
        self._need_lead()
        self.ring = True

    async def take_unrouted(self, limit: int) -> list[Unrouted]:
        self._need_lead()
        taken = []
        for body, keyed in self.unrouted[:limit]:
            self._tags += 1
            taken.append(Unrouted(body, keyed, self._tags))
        del self.unrouted[: len(taken)]
        self._taken += taken
        return taken

    async def ack_unrouted(self, messages: Sequence[Unrouted]) -> None:
        self._need_lead()
        last = max((m.tag for m in messages), default=0)
        self._taken = [m for m in self._taken if m.tag > last]

"""The ports of the partition ring and of tracker membership (see app/services/ring.py and
app/services/partitions.py), beside app/ports.py, which re-exports them.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


class BarrierStore(Protocol):
    """The state of the partition ring's barriers (see app/services/ring.py), shared by trackers."""

    async def begin_barrier(self, now: datetime) -> str:
        """The oldest ring barrier not yet opened, or a new one: its epoch (see services/ring)."""
        ...

    async def barrier_arrive(self, epoch: str, partition: int, now: datetime) -> None:
        """Record that ``partition`` reached the marker of ``epoch`` (idempotent)."""
        ...

    async def barrier_arrivals(self, epoch: str) -> set[int]:
        """The partitions that reached the marker of ``epoch``."""
        ...

    async def barrier_opened(self, epoch: str) -> bool:
        """Whether ``epoch`` was opened; an epoch this store never saw counts as opened."""
        ...

    async def open_barrier(self, epoch: str, now: datetime) -> None:
        """Open ``epoch``: partitions paused at its marker go on (idempotent)."""
        ...

    async def close(self) -> None: ...


class Membership(Protocol):
    """Which trackers of a deployment are alive, by heartbeat on a store they all share.

    Time is the store's own clock, so trackers on machines with skewed clocks agree.
    """

    async def beat(self, member: str, ttl: float) -> list[str]:
        """Record ``member`` alive for ``ttl`` more seconds; the live members, sorted."""
        ...

    async def leave(self, member: str) -> None:
        """Forget ``member`` now (a clean stop: its partitions move without waiting)."""
        ...

    async def close(self) -> None: ...


class PartitionConsumers(Protocol):
    """Starts and stops consuming partition queues (one broker connection each)."""

    async def consume(self, partition: int) -> None:
        """Subscribe to ``partition``: active at once, or when its current consumer goes."""
        ...

    async def release(self, partition: int) -> None:
        """Stop consuming ``partition``, handing its unacknowledged deliveries back in order.

        The caller first made sure nothing before them is left unrecorded.
        """
        ...

    def consuming(self) -> set[int]:
        """The partitions subscribed to now."""
        ...


@dataclass(frozen=True)
class Unrouted:
    """A message RabbitMQ could not route to a partition (no ring yet), taken off its queue."""

    body: bytes
    keyed: bool
    tag: int


class RingBroker(Protocol):
    """The broker side of the partition ring's barrier (see app/services/ring.py).

    Every method raises PublishFailed when the broker cannot be reached.
    """

    async def ring_exists(self) -> bool: ...

    def leadership(self) -> AbstractAsyncContextManager[bool]:
        """Hold the broker-wide leader lock for the block if no one else does (yields whether)."""
        ...

    async def place_markers(self, epoch: str) -> None:
        """Append a marker of ``epoch`` to every partition queue, confirmed."""
        ...

    async def build_ring(self) -> None:
        """Build the ring afresh (same order, same routing) and feed it from the events exchange."""
        ...

    async def take_unrouted(self, limit: int) -> list[Unrouted]:
        """The next (up to ``limit``) messages of the unrouted queue, oldest first, unacknowledged.

        A batch may come short; an empty one means the queue is drained. Acknowledge as you go:
        an adapter may deliver only so many unacknowledged messages.
        """
        ...

    async def ack_unrouted(self, messages: Sequence[Unrouted]) -> None:
        """Acknowledge ``messages`` (taken in this leadership, all of them so far).

        What was taken and not acknowledged when the leadership ends goes back to the queue,
        in order, for the next leader.
        """
        ...

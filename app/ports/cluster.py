"""Ports of the trackers sharing a deployment: ring barriers, membership, partition consumers."""

from __future__ import annotations

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

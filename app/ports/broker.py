"""Ports of the broker: confirmed publishes and the broker side of the partition ring."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

from app.domain.events import JobEvent
from app.ports.projection import OutboxMessage


class Publisher(Protocol):
    """Publishes to RabbitMQ with publisher confirms; raises PublishFailed when unconfirmed."""

    async def publish(self, message: OutboxMessage) -> None: ...

    async def quarantine(self, body: bytes, reason: str, headers: Mapping[str, str]) -> None: ...

    async def rekey(self, body: bytes, routing_key: str, job_id: str) -> None:
        """Publish an event again with its job-id header (it came without one)."""
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


class ActionPublisher(Protocol):
    """Publishes operator actions (cancel, redrive) as events for the tracker to record."""

    async def publish(self, event: JobEvent) -> None:
        """Publish an event for the tracker to record (confirmed by the broker)."""
        ...

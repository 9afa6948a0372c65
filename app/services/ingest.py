"""Ingestion: decode a message, quarantine what cannot be accepted, batch the rest into the log.

A message is acknowledged only when its ``submit`` returns: after the durable commit of its
batch, or after it was safely quarantined. A store outage never fails a message: the batch is
retried with backoff while the messages stay unacknowledged. A write the store refuses is not an
outage: the batch is split until the event at fault stands alone, that event is quarantined with
the store's reason, and its batch-mates are recorded (docs/reliability.md, "Poison isolation").
The batching itself is app/services/batcher.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from pydantic import ValidationError

from app.domain.events import JobEvent, parse_event
from app.ports import Publisher, WriteRefused
from app.services.batcher import Batcher, DeliveryAbandoned, Pending

log = logging.getLogger("jobtrail.ingest")


def rejection_reason(body: bytes) -> tuple[JobEvent | None, str | None]:
    """The decoded event, or why the message cannot be accepted (one line, no secrets).

    pydantic's own JSON parser validates the bytes in one pass; only a body it refuses goes
    through the step-by-step diagnosis that names the first thing wrong with it. The two agree
    on what they accept (tests/unit/test_rejection_reason.py).
    """
    try:
        return parse_event(body), None
    except ValidationError:
        return diagnose(body)


def diagnose(body: bytes) -> tuple[JobEvent | None, str | None]:
    """``rejection_reason`` step by step: UTF-8, then JSON (Python's parser), then the event."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"invalid_utf8: {exc.reason} at byte {exc.start}"
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"invalid_json: {exc.msg} at line {exc.lineno} column {exc.colno}"
    except RecursionError:
        return None, "invalid_json: nested too deeply"
    try:
        return parse_event(text), None
    except ValidationError as exc:
        return None, "invalid_event: " + _summarize(exc)


def _summarize(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False)[:5]:
        where = ".".join(str(p) for p in error["loc"]) or "event"
        parts.append(f"{where}: {error['msg']}")
    more = f" (+{exc.error_count() - 5} more)" if exc.error_count() > 5 else ""
    return "; ".join(parts)[:900] + more


@dataclass
class Ingestor:
    """The subscriber's service: accept a raw message or quarantine it with its reason."""

    batcher: Batcher
    publisher: Publisher
    quarantined: Callable[[str], None] | None = None
    misrouted: Callable[[str], None] | None = None
    """Called with the event's type when its routing key is not ``job.<type>``."""
    rekey_unkeyed: bool = False
    """Re-publish events that came without ``x-jobtrail-job-id`` (needed with partitions)."""
    _held: dict[int, list[Pending]] = field(default_factory=dict)
    _in_flight: dict[int, int] = field(default_factory=dict)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def delivery(self, partition: int) -> _Delivery:
        """Wrap the handling of one delivery of ``partition``, up to and including its ack.

        A plain (synchronous) context manager: entering and leaving never wait, and one is
        made per message.
        """
        return _Delivery(self, partition)

    def begin(self, partition: int) -> None:
        """Count one delivery of ``partition`` in flight (``delivery`` without a block)."""
        self._in_flight[partition] = self._in_flight.get(partition, 0) + 1

    def end(self, partition: int) -> None:
        """The delivery counted by ``begin`` is done: acknowledged, given back or abandoned."""
        self._in_flight[partition] -= 1
        self._changed.set()

    async def settled(self, partition: int) -> None:
        """Wait until every delivery of ``partition`` in flight is done, except the held ones.

        With the partition paused, what is left unacknowledged after this is exactly what it
        holds: safe to hand back to the broker.
        """
        while self._in_flight.get(partition, 0) > len(self._held.get(partition, ())):
            self._changed.clear()
            await self._changed.wait()

    def pause(self, partition: int) -> None:
        """Hold ``partition``'s next events, in arrival order, until ``resume`` (no await)."""
        self._held.setdefault(partition, [])

    def resume(self, partition: int) -> None:
        """Hand ``partition``'s held events to the batcher, in order, and stop holding."""
        for pending in self._held.pop(partition, []):
            self.batcher.hand(pending)

    def abandon(self, partition: int) -> None:
        """Stop holding ``partition`` and never record what it held here.

        Their messages stay unacknowledged and the broker delivers them again, in order, once
        this consumer is gone (call it after that): their handlers are cancelled.
        """
        for pending in self._held.pop(partition, []):
            pending.done.cancel()
        self._changed.set()

    def paused(self, partition: int) -> bool:
        return partition in self._held

    async def accept(
        self,
        body: bytes,
        *,
        keyed: bool = True,
        partition: int | None = None,
        routing_key: str | None = None,
    ) -> None:
        """Record, quarantine or re-key one message; returns when it may be acknowledged.

        Events of a paused ``partition`` wait, in order, until it resumes; if the partition
        is abandoned meanwhile, ``DeliveryAbandoned`` is raised. The body's type decides what
        an event is: a ``routing_key`` that contradicts it is reported (``misrouted``), never
        a reason to refuse a valid event (docs/protocol.md).
        """
        event, reason = rejection_reason(body)
        if event is not None:
            self._check_route(event, routing_key)
        if event is None:
            assert reason is not None
            await self._quarantine(body, reason)
            return
        if not keyed and self.rekey_unkeyed:
            # Without the header the broker cannot tell the job's partition: send it again
            # with the header, so the job's owner records it. Returns once the broker confirmed
            # the copy (else raises: this one is then not acknowledged, and comes back).
            await self.publisher.rekey(body, f"job.{event.type}", event.job_id)
            return
        try:
            await self._record(event, partition)
        except WriteRefused as exc:  # the store will never take it: park it, with the reason
            await self.refused(body, exc)

    def accept_soon(
        self, body: bytes, *, keyed: bool, partition: int, routing_key: str | None
    ) -> asyncio.Future[None] | None:
        """``accept``'s common case without a coroutine per message, or None if it does not apply.

        A valid event that names its job, of a partition that is not paused, is handed to the
        batcher now; the future is done when it may be acknowledged, or fails as ``accept``
        would have raised (``WriteRefused``: quarantine it with ``refused``). Anything else (a
        body to quarantine, an event to re-key, a paused partition) answers None: the caller
        then awaits ``accept``, which parses the body again (rare cases only).
        """
        if partition in self._held or (not keyed and self.rekey_unkeyed):
            return None
        event, _ = rejection_reason(body)
        if event is None:
            return None
        self._check_route(event, routing_key)
        pending = Pending.of(event)
        self.batcher.hand(pending)
        return pending.done

    async def refused(self, body: bytes, exc: WriteRefused) -> None:
        """Quarantine an event the store refused (one ``accept_soon`` handed over, too)."""
        await self._quarantine(body, f"refused_by_store: {exc}")

    async def _quarantine(self, body: bytes, reason: str) -> None:
        await self.publisher.quarantine(body, reason, {})
        log.info("quarantined", extra={"reason": reason})
        if self.quarantined is not None:
            self.quarantined(reason.split(":", 1)[0])

    async def _record(self, event: JobEvent, partition: int | None) -> None:
        held = self._held.get(partition) if partition is not None else None
        if held is None:
            await self.batcher.submit(event)
            return
        pending = Pending.of(event)
        held.append(pending)
        try:
            await pending.done
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():  # the handler itself is cancelled
                if pending in held:
                    held.remove(pending)  # its message stays unacknowledged: never recorded
                raise
            raise DeliveryAbandoned from None

    def _check_route(self, event: JobEvent, routing_key: str | None) -> None:
        """Report ``event`` if a ``routing_key`` it came with contradicts its type."""
        if routing_key is not None and routing_key != f"job.{event.type}":
            self._misrouted(event, routing_key)

    def _misrouted(self, event: JobEvent, routing_key: str) -> None:
        log.warning(
            "event %s of job %s has type %s but routing key %s: recorded as its body says",
            event.event_id,
            event.job_id,
            event.type,
            routing_key[:255],
        )
        if self.misrouted is not None:
            self.misrouted(event.type)


class _Delivery:
    """``Ingestor.delivery``: counts one delivery of a partition in flight while inside."""

    __slots__ = ("ingestor", "partition")

    def __init__(self, ingestor: Ingestor, partition: int) -> None:
        self.ingestor, self.partition = ingestor, partition

    def __enter__(self) -> None:
        self.ingestor.begin(self.partition)

    def __exit__(self, *_exc: object) -> None:
        self.ingestor.end(self.partition)

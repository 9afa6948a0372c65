"""Ingestion: decode a message, quarantine what cannot be accepted, batch the rest into the log.

A message is acknowledged only when its ``submit`` returns: after the durable commit of its
batch, or after it was safely quarantined. A store outage never fails a message: the batch is
retried with backoff while the messages stay unacknowledged. A write the store refuses is not an
outage: the batch is split until the event at fault stands alone, that event is quarantined with
the store's reason, and its batch-mates are recorded (docs/reliability.md, "Poison isolation").
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from pydantic import ValidationError

from app.backoff import Backoff
from app.domain.events import JobEvent, parse_event
from app.ports import Publisher, StoreUnavailable, WriteRefused

log = logging.getLogger("jobtrail.ingest")

RecordBatch = Callable[[Sequence[JobEvent]], Awaitable[object]]


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


class DeliveryAbandoned(Exception):
    """A held delivery was given up (``Ingestor.abandon``): neither recorded nor acknowledged.

    Its message goes back to the queue when its channel closes; the handler just ends.
    """


@dataclass
class Health:
    """What /healthz and the logs say about the stores, fed by every background loop.

    Each loop (the batcher, the timer loop, the outbox relay, the ring keeper) degrades its own
    entry when it meets an outage and clears it when that loop next succeeds: the tracker is ok
    when no loop is degraded, without waiting for an event to pass through the batcher.
    """

    reasons: dict[str, str] = field(default_factory=dict)
    """loop name -> why that loop is degraded now."""

    def degrade(self, loop: str, reason: str) -> None:
        self.reasons[loop] = reason

    def recover(self, loop: str) -> None:
        self.reasons.pop(loop, None)

    @property
    def degraded_reason(self) -> str | None:
        """The reasons of the degraded loops (``loop: reason; ...``), or None when all are ok."""
        if not self.reasons:
            return None
        return "; ".join(f"{loop}: {why}" for loop, why in sorted(self.reasons.items()))

    @property
    def ok(self) -> bool:
        return not self.reasons


@dataclass(eq=False)  # compared and hashed by identity: one per delivery
class _Pending:
    event: JobEvent | None
    """None for a flush: done once everything queued before it is recorded."""
    done: asyncio.Future[None]

    @classmethod
    def of(cls, event: JobEvent | None) -> _Pending:
        return cls(event, asyncio.get_running_loop().create_future())


@dataclass
class Batcher:
    """Accumulates events into micro-batches (up to ``max_size``, lingering ``max_wait`` or more).

    Batches are recorded one at a time, in arrival order, so a job's events keep their order.
    Under load the linger grows with the time the last batch took to record (at most
    ``max_linger``): messages the broker sends after a commit's acks then join the next batch
    instead of making a tiny one that costs as many round trips as a full one.
    """

    record: RecordBatch
    health: Health
    max_size: int = 256
    max_wait: float = 0.01
    max_linger: float = 0.1
    first_backoff: float = 0.1
    max_backoff: float = 5.0
    """A batch that meets an outage is retried after ``first_backoff`` s, doubling to this."""
    stop_timeout: float = 2.0
    """How long ``stop`` waits for a cancelled batch to let go."""
    recorded: int = 0
    """How many events this batcher has durably recorded (for metrics and the benchmark)."""
    _queue: asyncio.Queue[_Pending] = field(default_factory=asyncio.Queue)
    _task: asyncio.Task[None] | None = None
    _stopped: bool = False
    _in_flight: list[_Pending] = field(default_factory=list)

    def start(self) -> None:
        self._stopped = False
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="jobtrail-batcher")

    async def stop(self) -> None:
        """Stop recording within ``stop_timeout``: what is not recorded yet is abandoned.

        The batch in flight and everything queued end with ``DeliveryAbandoned``: never
        acknowledged, their messages are delivered again. A record call that ignores its
        cancellation (a driver stuck on a dead connection) is left behind, not waited for.
        """
        task, self._task = self._task, None
        self._stopped = True
        if task is not None:
            task.cancel()
            done, _ = await asyncio.wait((task,), timeout=self.stop_timeout)
            if not done:
                log.warning("recording ignored its cancellation; stopping without it")
        _abandon(self._in_flight)
        while not self._queue.empty():
            _abandon([self._queue.get_nowait()])

    async def submit(self, event: JobEvent) -> None:
        """Return once ``event`` is durably recorded and projected."""
        pending = _Pending.of(event)
        self.hand(pending)
        await pending.done

    async def flush(self) -> None:
        """Return once every event submitted before this call is recorded."""
        pending = _Pending.of(None)
        self.hand(pending)
        await pending.done

    def hand(self, pending: _Pending) -> None:
        """Queue ``pending`` now, behind everything queued before (no await: order is kept)."""
        if self._stopped:  # nothing would record it: its submitter must not wait forever
            _abandon([pending])
            return
        self._queue.put_nowait(pending)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        linger = self.max_wait
        while True:
            batch = self._in_flight = await self._collect(linger)
            started = loop.time()
            try:
                await self._record_until_done(batch)
            finally:
                _abandon(batch)  # cut short by stop: these stay unacknowledged
            took = loop.time() - started
            linger = min(max(self.max_wait, took / 2), self.max_linger)

    async def _collect(self, linger: float) -> list[_Pending]:
        batch = [await self._queue.get()]
        try:
            return await self._linger(batch, linger)
        except BaseException:
            _abandon(batch)  # stopped while collecting: these stay unacknowledged
            raise

    async def _linger(self, batch: list[_Pending], linger: float) -> list[_Pending]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + linger
        while len(batch) < self.max_size:
            if not self._queue.empty():  # what is already there, without a timer per event
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                # Not asyncio.wait_for: on Python 3.11 it swallows a stop's cancellation that
                # arrives with an event, and stop() then waited forever (issue 10).
                async with asyncio.timeout(remaining):
                    batch.append(await self._queue.get())
            except TimeoutError:
                break
        return batch

    async def _record_until_done(self, batch: list[_Pending]) -> None:
        waits = Backoff(self.first_backoff, self.max_backoff).waits()
        while True:
            try:
                failed = await self._record_isolating(batch)
            except StoreUnavailable as exc:
                self.health.degrade("batcher", f"store unavailable: {exc}")
                log.warning("store unavailable, retrying in %.1fs: %s", waits.delay, exc)
                await waits.wait()
                continue
            self.health.recover("batcher")
            for pending in batch:
                if pending.done.done():
                    continue
                if pending in failed:
                    pending.done.set_exception(failed[pending])
                else:
                    self.recorded += pending.event is not None
                    pending.done.set_result(None)
            return

    async def _record_isolating(self, batch: list[_Pending]) -> dict[_Pending, Exception]:
        """Record ``batch``; the events at fault, with their errors, when it fails for good.

        A batch that fails for any reason but an outage is split in halves, each recorded in
        turn (so each job's events keep their order), until the events at fault stand alone:
        one event the store refuses costs its batch-mates a few more round trips, not their
        acknowledgement. An outage (``StoreUnavailable``) is raised: the caller retries the
        whole batch, and what was recorded meanwhile is then a duplicate, a no-op.
        """
        events = [p.event for p in batch if p.event is not None]
        if not events:
            return {}
        try:
            await self.record(events)
        except StoreUnavailable:
            raise
        except Exception as exc:
            if len(events) > 1:
                half = len(batch) // 2
                return await self._record_isolating(batch[:half]) | await self._record_isolating(
                    batch[half:]
                )
            _report_failure(events[0], exc)
            return {p: exc for p in batch if p.event is not None}
        return {}


def _report_failure(event: JobEvent, exc: Exception) -> None:
    where = {"event_id": str(event.event_id), "job_id": event.job_id, "type": event.type}
    if isinstance(exc, WriteRefused):
        log.warning("the store refused an event: %s", exc, extra=where)
    else:  # a bug: its message is nacked, and the broker's delivery limit takes it in the end
        log.error("recording an event failed", exc_info=exc, extra=where)


def _abandon(batch: Sequence[_Pending]) -> None:
    """Fail what is not done yet with ``DeliveryAbandoned`` (its submitter does not ack)."""
    for pending in batch:
        if not pending.done.done():
            pending.done.set_exception(DeliveryAbandoned())


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
    _held: dict[int, list[_Pending]] = field(default_factory=dict)
    _in_flight: dict[int, int] = field(default_factory=dict)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def delivery(self, partition: int) -> _Delivery:
        """Wrap the handling of one delivery of ``partition``, up to and including its ack.

        A plain (synchronous) context manager: entering and leaving never wait, and one is
        made per message.
        """
        return _Delivery(self, partition)

    def _begin(self, partition: int) -> None:
        self._in_flight[partition] = self._in_flight.get(partition, 0) + 1

    def _end(self, partition: int) -> None:
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
        if event is not None and routing_key not in (None, f"job.{event.type}"):
            self._misrouted(event, str(routing_key))
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
        pending = _Pending.of(event)
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
        self.ingestor._begin(self.partition)

    def __exit__(self, *_exc: object) -> None:
        self.ingestor._end(self.partition)

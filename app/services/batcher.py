"""Micro-batches: accepted events recorded a batch at a time, in order, retried over outages.

A store outage never fails an event: its batch is retried with backoff while the messages stay
unacknowledged. A write the store refuses is not an outage: the batch is split until the event
at fault stands alone; that event's submitter gets the store's error (the ingestor quarantines
it) and its batch-mates are recorded (docs/reliability.md, "Poison isolation").
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from app.backoff import Backoff
from app.domain.events import JobEvent
from app.ports import StoreUnavailable, WriteRefused
from app.services.health import Health

log = logging.getLogger("jobtrail.ingest")  # the logger it had in app/services/ingest.py

RecordBatch = Callable[[Sequence[JobEvent]], Awaitable[object]]


class DeliveryAbandoned(Exception):
    """A held delivery was given up (``Ingestor.abandon``): neither recorded nor acknowledged.

    Its message goes back to the queue when its channel closes; the handler just ends.
    """


@dataclass(eq=False)  # compared and hashed by identity: one per delivery
class Pending:
    """One event handed to the batcher (or a flush), and the future its submitter awaits."""

    event: JobEvent | None
    """None for a flush: done once everything queued before it is recorded."""
    done: asyncio.Future[None]

    @classmethod
    def of(cls, event: JobEvent | None) -> Pending:
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
    _queue: asyncio.Queue[Pending] = field(default_factory=asyncio.Queue)
    _task: asyncio.Task[None] | None = None
    _stopped: bool = False
    _in_flight: list[Pending] = field(default_factory=list)

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
        pending = Pending.of(event)
        self.hand(pending)
        await pending.done

    async def flush(self) -> None:
        """Return once every event submitted before this call is recorded."""
        pending = Pending.of(None)
        self.hand(pending)
        await pending.done

    def hand(self, pending: Pending) -> None:
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

    async def _collect(self, linger: float) -> list[Pending]:
        batch = [await self._queue.get()]
        try:
            return await self._linger(batch, linger)
        except BaseException:
            _abandon(batch)  # stopped while collecting: these stay unacknowledged
            raise

    async def _linger(self, batch: list[Pending], linger: float) -> list[Pending]:
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

    async def _record_until_done(self, batch: list[Pending]) -> None:
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

    async def _record_isolating(self, batch: list[Pending]) -> dict[Pending, Exception]:
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


def _abandon(batch: Sequence[Pending]) -> None:
    """Fail what is not done yet with ``DeliveryAbandoned`` (its submitter does not ack)."""
    for pending in batch:
        if not pending.done.done():
            pending.done.set_exception(DeliveryAbandoned())

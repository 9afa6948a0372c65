"""The tracking services on in-memory fakes (held to the same contract suites as the real stores)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta

import pytest

from app.adapters.clock import SystemClock
from app.adapters.memory_log import InMemoryEventLog
from app.adapters.memory_store import InMemoryProjectionStore
from app.domain.events import Failed, JobEvent, Reserved, Submitted
from app.domain.policy import Policy
from app.ports import (
    LogUnavailable,
    OutboxMessage,
    ProjectionUpdate,
    PublishFailed,
    TimerRow,
)
from app.services.batcher import Batcher
from app.services.broker_signals import broker_dead_letter
from app.services.health import Health
from app.services.ingest import Ingestor, rejection_reason
from app.services.projection import job_row
from app.services.relay import OutboxRelay, TimerLoop
from app.services.replay import replay_decisions
from app.services.tracking import Tracker, fold_history
from tests.contract.test_projection_store import job as contract_job

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
POLICY = Policy.from_toml(
    """
[defaults]
max_attempts = 2
lease_seconds = 60
ttl_seconds = 3600
[defaults.retry]
initial_interval_seconds = 10
backoff_coefficient = 2
max_interval_seconds = 100
"""
)


class FakeClock:
    def __init__(self) -> None:
        self.at = T0

    def now(self) -> datetime:
        return self.at


class FakePublisher:
    def __init__(self) -> None:
        self.published: list[OutboxMessage] = []
        self.quarantined: list[tuple[bytes, str]] = []
        self.fail = False

    async def publish(self, message: OutboxMessage) -> None:
        if self.fail:
            raise PublishFailed("broker down")
        self.published.append(message)

    async def quarantine(self, body: bytes, reason: str, headers: Mapping[str, str]) -> None:
        self.quarantined.append((body, reason))


def env(job: str, attempt: int = 1) -> dict[str, object]:
    return {
        "event_id": uuid.uuid4(),
        "job_id": job,
        "occurred_at": T0,
        "attempt": attempt,
        "source": "t",
    }


def submitted(job: str) -> Submitted:
    return Submitted(
        **env(job),
        job_type="batch",
        model="m",
        priority="bulk",
        tenant="t",
        pool="p",
        queue="q",
        payload={"k": 1},
    )


@pytest.fixture
def parts() -> tuple[Tracker, InMemoryEventLog, InMemoryProjectionStore, FakeClock]:
    log, store, clock = InMemoryEventLog(), InMemoryProjectionStore(), FakeClock()
    return Tracker(log, store, POLICY, clock), log, store, clock


async def test_failure_then_timer_retries_after_cooldown_and_owes_a_republish(parts) -> None:  # type: ignore[no-untyped-def]
    tracker, log, store, clock = parts
    await tracker.record(
        [
            submitted("j"),
            Reserved(**env("j"), node_id="n"),
            Failed(**env("j"), node_id="n", error_code="oom", retryable=True),
        ]
    )
    row = await store.get_job("j")
    assert row is not None and row.status == "cooling_down" and row.deadline_kind == "cooldown"
    assert row.next_deadline_at is not None
    clock.at = row.next_deadline_at - timedelta(milliseconds=1)
    assert await tracker.fire_due_timers() == 0
    clock.at = row.next_deadline_at
    assert await tracker.fire_due_timers() == 1
    row = await store.get_job("j")
    assert row is not None and (row.status, row.attempt) == ("queued", 2)
    [message] = await store.pending_outbox(10)
    assert (message.routing_key, json.loads(message.body)) == (
        "q",
        {"job_id": "j", "attempt": 2, "payload": {"k": 1}},
    )
    assert message.headers["x-jobtrail-attempt"] == 2


async def test_projection_equals_a_fresh_fold_and_decisions_replay(parts) -> None:  # type: ignore[no-untyped-def]
    tracker, log, store, clock = parts
    await tracker.record([submitted("j"), Reserved(**env("j"), node_id="n")])
    clock.at = T0 + timedelta(minutes=5)  # lease of 60 s ran out
    await tracker.fire_due_timers()
    clock.at += timedelta(minutes=5)  # cooldown over: retried
    await tracker.fire_due_timers()
    await tracker.record(
        [
            Reserved(**env("j", 2), node_id="n"),
            Failed(**env("j", 2), node_id="n", error_code="x", retryable=True),
        ]
    )
    events = await log.read_job("j")
    assert [e.event.type for e in events] == [
        "submitted",
        "reserved",
        "expired",
        "retried",
        "reserved",
        "failed",
        "dead_lettered",
    ]
    state = fold_history(events, POLICY)
    assert await store.get_job("j") == job_row(state, POLICY)
    assert replay_decisions(events, POLICY) == []
    dead = [m for m in await store.pending_outbox(10) if m.routing_key == "jobtrail.dead"]
    assert json.loads(dead[0].body)["reason"] == "retries_exhausted"


async def test_a_second_settle_of_the_same_decision_stores_it_once(parts) -> None:  # type: ignore[no-untyped-def]
    tracker, log, store, clock = parts
    await tracker.record(
        [
            submitted("j"),
            Reserved(**env("j"), node_id="n"),
            Failed(**env("j"), node_id="n", error_code="bad", retryable=False),
        ]
    )
    before = await log.count()
    await tracker.settle(["j"])
    await tracker.record([Failed(**env("j"), node_id="n", error_code="bad", retryable=False)])
    assert await log.count() == before + 1  # only the late duplicate report, flagged
    row = await store.get_job("j")
    assert row is not None and (row.status, row.anomalies) == ("dead_lettered", 1)


class FlakyRecorder:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.batches: list[Sequence[JobEvent]] = []

    async def __call__(self, events: Sequence[JobEvent]) -> None:
        if self.failures:
            self.failures -= 1
            raise LogUnavailable("log down")
        self.batches.append(events)


async def test_batcher_holds_messages_through_an_outage_and_reports_degraded() -> None:
    recorder, health = FlakyRecorder(failures=2), Health()
    batcher = Batcher(recorder, health, max_wait=0.001)
    batcher.start()
    try:
        pending = asyncio.ensure_future(batcher.submit(submitted("a")))
        async with asyncio.timeout(5):  # the first failure: it cannot be done before a third try
            while health.ok:  # noqa: ASYNC110
                await asyncio.sleep(0.001)
        assert (
            not pending.done() and health.degraded_reason == "batcher: store unavailable: log down"
        )
        await asyncio.wait_for(pending, 5)
        assert health.ok and [e.job_id for b in recorder.batches for e in b] == ["a"]
    finally:
        await batcher.stop()


async def test_batcher_keeps_arrival_order_within_and_across_batches() -> None:
    recorder, health = FlakyRecorder(failures=0), Health()
    batcher = Batcher(recorder, health, max_size=7, max_wait=0.001)
    batcher.start()
    try:
        events = [submitted(f"j{i}") for i in range(50)]
        await asyncio.gather(*(batcher.submit(e) for e in events))
        assert [e.job_id for b in recorder.batches for e in b] == [e.job_id for e in events]
        assert max(len(b) for b in recorder.batches) <= 7
    finally:
        await batcher.stop()


@pytest.mark.parametrize(
    ("body", "prefix"),
    [
        (b"\xff\xfe", "invalid_utf8:"),
        (b'{"type": ', "invalid_json:"),
        (b'{"type": "submitted"}', "invalid_event:"),
        (
            json.dumps(
                {
                    "type": "completed",
                    "event_id": str(uuid.uuid4()),
                    "job_id": {"$gt": ""},
                    "occurred_at": "2026-11-27T10:00:00Z",
                    "attempt": 1,
                    "source": "n",
                    "node_id": "n",
                }
            ).encode(),
            "invalid_event: completed.job_id",
        ),
    ],
)
async def test_unacceptable_input_is_quarantined_with_a_reason(body: bytes, prefix: str) -> None:
    assert rejection_reason(body)[1] is not None
    publisher = FakePublisher()
    never = Batcher(FlakyRecorder(0), Health())
    await Ingestor(never, publisher).accept(body)
    assert len(publisher.quarantined) == 1
    assert publisher.quarantined[0][0] == body
    assert publisher.quarantined[0][1].startswith(prefix)


async def test_outbox_relay_publishes_then_marks_and_keeps_rows_when_the_broker_fails(
    parts,
) -> None:  # type: ignore[no-untyped-def]
    tracker, log, store, clock = parts
    await tracker.record(
        [
            submitted("j"),
            Reserved(**env("j"), node_id="n"),
            Failed(**env("j"), node_id="n", error_code="bad", retryable=False),
        ]
    )
    publisher = FakePublisher()
    relay = OutboxRelay(store, publisher, clock)
    publisher.fail = True
    with pytest.raises(PublishFailed):
        await relay.drain_once()
    assert len(await store.pending_outbox(10)) == 1
    publisher.fail = False
    assert await relay.drain_once() == 1
    assert await store.pending_outbox(10) == []
    assert publisher.published[0].routing_key == "jobtrail.dead"


def test_broker_dead_letter_signals_map_reasons_and_are_idempotent() -> None:
    body = json.dumps({"job_id": "j1", "attempt": 2, "payload": None}).encode()
    headers = {
        "x-death": [{"reason": "expired", "queue": "jobtrail.work.p.sync", "count": 1}],
        "x-delivery-count": 3,
    }
    event, reason = broker_dead_letter(body, headers, T0)
    again, _ = broker_dead_letter(body, headers, T0)
    assert reason is None and event is not None and again is not None
    assert (event.reason, event.source, event.attempt, event.event_id) == (
        "ttl",
        "broker",
        2,
        again.event_id,
    )
    assert "x-delivery-count=3" in event.detail
    limit = {"x-death": [{"reason": "delivery_limit", "queue": "q", "count": 1}]}
    assert broker_dead_letter(body, limit, T0)[0].reason == "poison"  # type: ignore[union-attr]
    assert broker_dead_letter(b"nope", headers, T0)[1].startswith("invalid_job_message")  # type: ignore[union-attr]
    bad_id = json.dumps({"job_id": "a/b", "attempt": 1}).encode()
    assert broker_dead_letter(bad_id, headers, T0)[0] is None


class RefusingPublisher(FakePublisher):
    """A broker that refuses messages to some routing keys and takes the rest."""

    def __init__(self, refused: set[str]) -> None:
        super().__init__()
        self.refused = refused
        self.attempts: list[str] = []

    async def publish(self, message: OutboxMessage) -> None:
        self.attempts.append(message.event_id)
        if message.routing_key in self.refused:
            raise PublishFailed(f"ACCESS_REFUSED {message.routing_key}")
        await super().publish(message)


def outbox_row(n: int, job: str, routing_key: str) -> OutboxMessage:
    return OutboxMessage(
        event_id=f"e{n}",
        job_id=job,
        exchange="",
        routing_key=routing_key,
        body=b"{}",
        created_at=T0 + timedelta(seconds=n),
    )


async def _seed_outbox(store: InMemoryProjectionStore, rows: list[OutboxMessage]) -> None:
    seqs: dict[str, int] = {}
    for row in rows:
        seqs[row.job_id] = seqs.get(row.job_id, 0) + 1
        job = contract_job(row.job_id, last_seq=seqs[row.job_id])
        await store.apply([ProjectionUpdate(job=job, outbox=[row])])


async def test_a_refused_outbox_row_holds_back_only_its_own_job() -> None:
    store = InMemoryProjectionStore()
    rows = [
        outbox_row(1, "bad", "amq.refused"),
        outbox_row(2, "bad", "q"),  # the same job's next message waits behind it
        outbox_row(3, "a", "q"),
        outbox_row(4, "b", "q"),
    ]
    await _seed_outbox(store, rows)
    publisher = RefusingPublisher({"amq.refused"})
    clock = FakeClock()
    relay = OutboxRelay(store, publisher, clock, park_initial=0.05)
    assert await relay.drain_once() == 2
    assert [m.event_id for m in publisher.published] == ["e3", "e4"]
    assert relay.parked == 1
    assert [m.event_id for m in await store.pending_outbox(10)] == ["e1", "e2"]
    # Tried among the others, then once on its own (it might have failed for a neighbour).
    assert publisher.attempts.count("e1") == 2 and "e2" not in publisher.attempts
    assert await relay.drain_once() == 0, "parked: not tried again before its delay"
    assert publisher.attempts.count("e1") == 2
    clock.at += timedelta(seconds=0.049)
    assert await relay.drain_once() == 0, "still parked just before its delay ends"
    clock.at += timedelta(seconds=0.001)
    publisher.refused.clear()  # the operator fixed the broker's permissions
    assert await relay.drain_once() == 2
    assert [m.event_id for m in publisher.published] == ["e3", "e4", "e1", "e2"]
    assert relay.parked == 0 and await store.pending_outbox(10) == []


async def test_failures_one_after_another_mean_the_broker_is_down() -> None:
    store = InMemoryProjectionStore()
    await _seed_outbox(store, [outbox_row(n, f"j{n}", "q") for n in range(1, 6)])
    publisher = RefusingPublisher({"q"})
    relay = OutboxRelay(store, publisher, FakeClock(), max_failures=3)
    with pytest.raises(PublishFailed):
        await relay.drain_once()
    concurrent, one_by_one = publisher.attempts[:5], publisher.attempts[5:]
    assert sorted(concurrent) == ["e1", "e2", "e3", "e4", "e5"]
    assert one_by_one == ["e1", "e2", "e3"], "the pass ends after 3 failures in a row"
    assert relay.parked == 0, "nothing is parked for a broker-wide failure"
    assert len(await store.pending_outbox(10)) == 5


class ChannelClosingPublisher(FakePublisher):
    """Publishes wait for their confirm; refusing one message closes the channel, failing
    every publish in flight with it (RabbitMQ's channel errors do that)."""

    def __init__(self, poison: str) -> None:
        super().__init__()
        self.poison = poison
        self.in_flight: set[str] = set()
        self.most_in_flight = 0
        self.closed = False
        self.attempts: list[str] = []

    async def publish(self, message: OutboxMessage) -> None:
        self.attempts.append(message.event_id)
        self.in_flight.add(message.event_id)
        self.most_in_flight = max(self.most_in_flight, len(self.in_flight))
        try:
            await asyncio.sleep(0)  # waiting for the confirm: the others are sent meanwhile
            self.closed = self.closed or message.event_id == self.poison
            await asyncio.sleep(0)
            if self.closed:
                raise PublishFailed("CHANNEL_ERROR: channel closed")
            self.published.append(message)
        finally:
            self.in_flight.discard(message.event_id)
            if not self.in_flight:
                self.closed = False  # the next publish opens a new channel


async def test_publishes_overlap_and_a_refusal_does_not_park_its_neighbours() -> None:
    store = InMemoryProjectionStore()
    rows = [outbox_row(n, f"j{n}", "q") for n in range(1, 9)]
    rows += [outbox_row(9, "j1", "q")]  # the first job's second message: after e1, never before
    await _seed_outbox(store, rows)
    publisher = ChannelClosingPublisher(poison="e4")
    relay = OutboxRelay(store, publisher, FakeClock(), park_initial=60)
    assert await relay.drain_once() == 8
    assert publisher.most_in_flight == 8, "one message per job in flight at once"
    assert relay.parked == 1, "only the refused message is parked"
    assert [m.event_id for m in await store.pending_outbox(10)] == ["e4"]
    published = [m.event_id for m in publisher.published]
    assert sorted(published) == sorted(f"e{n}" for n in (1, 2, 3, 5, 6, 7, 8, 9))
    assert published.index("e1") < published.index("e9"), "a job's messages stay in order"


async def test_the_idle_timer_loop_sleeps_until_the_next_claimable_timer(parts) -> None:  # type: ignore[no-untyped-def]
    tracker, _, store, clock = parts
    loop = TimerLoop(tracker, Health(), interval=5.0)
    assert await loop.idle_pause() == 5.0, "no timers: the interval"
    soon = TimerRow("j", T0 + timedelta(seconds=0.05), "lease")
    await store.apply([ProjectionUpdate(job=contract_job("j"), timer=soon)])
    assert await loop.idle_pause() == pytest.approx(0.05)
    clock.at = T0 + timedelta(seconds=1)
    assert await loop.idle_pause() == loop.min_pause, "overdue: no sleep to speak of"
    await store.claim_due_timers(clock.at, 10, timedelta(seconds=10))  # another tracker's
    assert await loop.idle_pause() == 5.0, "held for 10 s: the interval"
    clock.at = T0 + timedelta(seconds=10.98)
    assert await loop.idle_pause() == pytest.approx(0.02), "until the claim ends"


class ClaimLog(InMemoryProjectionStore):
    def __init__(self) -> None:
        super().__init__()
        self.claimed: list[str] = []

    async def claim_due_timers(self, now: datetime, limit: int, hold: timedelta) -> list[TimerRow]:
        rows = await super().claim_due_timers(now, limit, hold)
        self.claimed += [t.job_id for t in rows]
        return rows


async def test_a_timer_fires_as_it_comes_due_not_an_interval_later() -> None:
    store = ClaimLog()
    tracker = Tracker(InMemoryEventLog(), store, POLICY, SystemClock())
    due = datetime.now(UTC) + timedelta(seconds=0.3)
    await store.apply([ProjectionUpdate(job=contract_job("j"), timer=TimerRow("j", due, "lease"))])
    task = asyncio.create_task(TimerLoop(tracker, Health(), interval=60.0).run())
    try:
        for _ in range(1000):  # up to 10 s; with a 60 s interval only the timer can wake it
            if store.claimed:
                break
            await asyncio.sleep(0.01)
        assert store.claimed == ["j"]
        assert datetime.now(UTC) >= due
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

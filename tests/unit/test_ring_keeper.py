"""The ring barrier (app/services/ring.py) on the in-memory store and RingBroker fake."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Mapping, Sequence

import pytest

from app.adapters.memory_store import InMemoryBarrierStore
from app.domain.events import JobEvent, Reserved
from app.ports import PublishFailed
from app.services.batcher import Batcher, DeliveryAbandoned
from app.services.health import Health
from app.services.ingest import Ingestor
from app.services.ring import RingKeeper
from tests.clock_fakes import ManualClock
from tests.ring_fakes import MemoryRingBroker
from tests.unit.test_tracking_service import FakeClock, env, submitted

Label = tuple[str, str]  # (job_id, event type)


class Recorder:
    """A batcher's ``record``: remembers what was recorded, in order; can be held shut."""

    def __init__(self) -> None:
        self.recorded: list[Label] = []
        self.open = asyncio.Event()
        self.open.set()

    async def __call__(self, events: Sequence[JobEvent]) -> None:
        await self.open.wait()
        self.recorded += [(e.job_id, e.type) for e in events]


class Publisher:
    def __init__(self) -> None:
        self.fail = False
        self.quarantined: list[str] = []
        self.rekeyed: list[str] = []

    async def publish(self, message: object) -> None:  # pragma: no cover - not used here
        raise AssertionError

    async def quarantine(self, body: bytes, reason: str, headers: Mapping[str, str]) -> None:
        if self.fail:
            raise PublishFailed("broker down")
        self.quarantined.append(reason)

    async def rekey(self, body: bytes, routing_key: str, job_id: str) -> None:
        self.rekeyed.append(job_id)


class PollCountingStore(InMemoryBarrierStore):
    """Counts the keeper's polls of ``barrier_opened``."""

    def __init__(self) -> None:
        super().__init__()
        self.polls = 0

    async def barrier_opened(self, epoch: str) -> bool:
        self.polls += 1
        return await super().barrier_opened(epoch)


class Rig:
    def __init__(self, partitions: int = 2, **keeper: float) -> None:
        self.recorder = Recorder()
        self.batcher = Batcher(self.recorder, Health(), max_wait=0.001)
        self.publisher = Publisher()
        self.ingestor = Ingestor(self.batcher, self.publisher)
        self.store = PollCountingStore()
        self.broker = MemoryRingBroker(partitions)
        self.clock = ManualClock()
        keeper.setdefault("poll", 0.005)
        self.keeper = RingKeeper(
            self.store, self.broker, self.ingestor, self.batcher, self.clock, partitions,
            **keeper,
        )  # fmt: skip
        self.tasks: list[asyncio.Task[None]] = []

    def deliver(self, partition: int, body: bytes | str) -> asyncio.Task[None]:
        """What the partition's subscriber does with one delivery (aio-pika: a task each)."""
        if isinstance(body, str):  # a marker: its epoch
            task = asyncio.create_task(self.keeper.arrive(partition, body))
        else:
            task = asyncio.create_task(self.ingestor.accept(body, partition=partition))
        self.tasks.append(task)
        return task

    async def settle(self) -> None:
        await asyncio.wait_for(asyncio.gather(*self.tasks), 5)


def body(event: JobEvent) -> bytes:
    return event.model_dump_json().encode()


def reserved(job: str) -> Reserved:
    return Reserved(**env(job), node_id="n")


async def until(check: Callable[[], bool]) -> None:
    """Poll ``check`` (state the code under test changes without signalling) for up to 5 s."""
    async with asyncio.timeout(5):
        while not check():  # noqa: ASYNC110
            await asyncio.sleep(0.002)


@pytest.fixture
async def rig() -> Rig:
    rig = Rig()
    rig.batcher.start()
    return rig


async def test_a_barrier_records_old_events_then_unrouted_ones_then_new_ones(rig: Rig) -> None:
    # Events routed by the lost ring wait in the partitions; the broker parked later ones.
    rig.broker.unrouted = [(body(reserved("j0")), True), (body(reserved("j1")), True)]
    rig.keeper.ensure_soon()
    await until(lambda: all(rig.broker.markers))
    epoch = rig.broker.markers[0][0]
    assert rig.broker.ring, "the ring is built right after the markers"
    # Partition 1 (where j0 used to go) still holds j0's submission, partition 0 j1's.
    rig.deliver(1, body(submitted("j0")))
    rig.deliver(1, epoch)
    rig.deliver(1, body(submitted("j8")))
    await until(lambda: rig.ingestor.paused(1))
    rig.deliver(0, body(submitted("j1")))
    await until(lambda: ("j1", "submitted") in rig.recorder.recorded)  # partition 0 flows
    assert not await rig.store.barrier_opened(epoch), "partition 0 has not arrived yet"
    assert ("j0", "reserved") not in rig.recorder.recorded
    rig.deliver(0, epoch)
    rig.deliver(0, body(submitted("j9")))
    await rig.settle()
    assert await rig.store.barrier_opened(epoch)
    assert rig.recorder.recorded.index(("j0", "submitted")) < rig.recorder.recorded.index(
        ("j0", "reserved")
    )
    assert rig.recorder.recorded.index(("j1", "submitted")) < rig.recorder.recorded.index(
        ("j1", "reserved")
    )
    # j8 and j9 came behind the markers: after everything the barrier let through.
    assert set(rig.recorder.recorded[-2:]) == {("j8", "submitted"), ("j9", "submitted")}
    assert set(rig.recorder.recorded[:4]) == {
        ("j0", "submitted"), ("j1", "submitted"), ("j0", "reserved"), ("j1", "reserved"),
    }  # fmt: skip
    assert rig.broker.unrouted == [] and rig.keeper.barriers == 1
    assert not rig.ingestor.paused(0) and not rig.ingestor.paused(1)


async def test_events_behind_a_marker_wait_and_keep_their_order(rig: Rig) -> None:
    async with rig.broker.leadership():
        epoch = await rig.store.begin_barrier(FakeClock().now())
    rig.deliver(0, epoch)
    jobs = [f"k{n}" for n in range(20)]
    for job in jobs:
        rig.deliver(0, body(submitted(job)))
    rig.deliver(1, body(submitted("other")))
    await until(lambda: ("other", "submitted") in rig.recorder.recorded)
    async with asyncio.timeout(5):  # arrives once its flush (maybe "other"'s batch) is done
        while await rig.store.barrier_arrivals(epoch) != {0}:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
    assert rig.recorder.recorded == [("other", "submitted")], "partition 0 waits, 1 goes on"
    await rig.store.open_barrier(epoch, FakeClock().now())
    await rig.settle()
    assert rig.recorder.recorded[1:] == [(job, "submitted") for job in jobs]


async def test_a_marker_waits_for_the_events_before_it_to_be_recorded(rig: Rig) -> None:
    rig.recorder.open.clear()
    async with rig.broker.leadership():
        epoch = await rig.store.begin_barrier(FakeClock().now())
    rig.deliver(0, body(submitted("before")))
    rig.deliver(0, epoch)
    await until(lambda: rig.ingestor.paused(0))  # the marker met: its flush waits on "before"
    assert await rig.store.barrier_arrivals(epoch) == set()
    rig.recorder.open.set()
    async with asyncio.timeout(5):
        while await rig.store.barrier_arrivals(epoch) != {0}:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
    assert rig.recorder.recorded == [("before", "submitted")]


async def test_no_barrier_while_the_ring_exists(rig: Rig) -> None:
    rig.broker.ring = True
    rig.keeper.ensure_soon()
    assert rig.keeper._ensuring is not None
    await asyncio.wait_for(rig.keeper._ensuring, 5)  # the check is over
    assert rig.broker.markers == [[], []] and rig.keeper.barriers == 0


async def test_another_leader_holds_the_lock(rig: Rig) -> None:
    async with rig.broker.leadership():
        assert await rig.keeper.lead() is False
    assert rig.broker.markers == [[], []] and not rig.broker.ring


async def test_a_marker_of_an_opened_barrier_passes_straight_through(rig: Rig) -> None:
    async with rig.broker.leadership():
        epoch = await rig.store.begin_barrier(FakeClock().now())
    await rig.store.open_barrier(epoch, FakeClock().now())
    await asyncio.wait_for(rig.keeper.arrive(0, epoch), 1)
    unknown = uuid.uuid4().hex  # e.g. the store was reset: never wait for it
    await asyncio.wait_for(rig.keeper.arrive(0, unknown), 1)
    assert await rig.store.barrier_arrivals(epoch) == set()
    assert not rig.ingestor.paused(0)


async def _left_by_a_dead_leader(rig: Rig) -> str:
    """The dead leader opened an epoch, placed its markers and built the ring, then died."""
    async with rig.broker.leadership():
        epoch = await rig.store.begin_barrier(rig.clock.now())
        await rig.broker.place_markers(epoch)
        await rig.broker.build_ring()
    return epoch


async def _arrived(rig: Rig, epoch: str) -> None:
    """Both partitions reported their marker (each then waits, from this clock time on)."""
    async with asyncio.timeout(5):
        while await rig.store.barrier_arrivals(epoch) != {0, 1}:  # noqa: ASYNC110
            await asyncio.sleep(0.005)


async def test_a_paused_partition_takes_over_a_barrier_whose_leader_died() -> None:
    rig = Rig(takeover_after=0.05)
    rig.batcher.start()
    epoch = await _left_by_a_dead_leader(rig)
    rig.broker.unrouted = [(body(reserved("late")), True)]
    rig.deliver(0, body(submitted("late")))
    rig.deliver(0, epoch)
    rig.deliver(1, epoch)
    await _arrived(rig, epoch)
    await rig.clock.advance(0.05)
    await rig.settle()
    assert await rig.store.barrier_opened(epoch)
    assert rig.recorder.recorded == [("late", "submitted"), ("late", "reserved")]
    assert rig.keeper.barriers == 1
    # The new leader placed its markers again: they pass through once the epoch is open.
    assert rig.broker.markers == [[epoch, epoch], [epoch, epoch]]
    rig.deliver(0, epoch)
    await rig.settle()


async def test_the_take_over_comes_on_the_clock_however_many_polls_ran() -> None:
    """1,000 polls of 1 ms are not 0.5 s: only the keeper's clock says when the leader is late
    (counting polls, a slow store or a busy loop stretched the take-over; here, with the clock
    standing still, the poll count would take over early)."""
    rig = Rig(takeover_after=0.5, poll=0.001)
    rig.batcher.start()
    epoch = await _left_by_a_dead_leader(rig)
    rig.deliver(0, epoch)
    rig.deliver(1, epoch)
    await _arrived(rig, epoch)

    def taken_over() -> bool:
        return rig.keeper._leading is not None or rig.broker.markers != [[epoch], [epoch]]

    async def polls(count: int) -> None:
        start = rig.store.polls
        await until(lambda: rig.store.polls >= start + count or taken_over())

    # 2,000 polls over the two waiting partitions: each counted 0.5 s of 1 ms polls twice over
    # (the poll count took over at 500), while the clock stood still.
    await polls(2000)
    assert not taken_over() and not await rig.store.barrier_opened(epoch)
    await rig.clock.advance(0.499)
    await polls(100)
    assert not taken_over(), "0.499 s on the clock: not yet"
    await rig.clock.advance(0.001)
    await rig.settle()  # both partitions pass the barrier
    assert await rig.store.barrier_opened(epoch) and rig.keeper.barriers == 1
    assert rig.broker.markers == [[epoch, epoch], [epoch, epoch]], "one take-over, not two"
    assert not rig.ingestor.paused(0) and not rig.ingestor.paused(1)
    # The other partition's wait can reach its take-over just as the first one opened the
    # epoch (seen on a busy machine): that late take-over leads nothing, no new barrier begins.
    rig.keeper._try_takeover(epoch)
    assert rig.keeper._leading is not None
    assert await asyncio.wait_for(rig.keeper._leading, 5) is False, "it led a new barrier"
    assert rig.broker.markers == [[epoch, epoch], [epoch, epoch]] and rig.keeper.barriers == 1


async def test_a_barrier_that_fails_midway_is_led_again_by_the_same_tracker(rig: Rig) -> None:
    rig.publisher.fail = True  # the quarantine is unreachable: the drain fails
    rig.broker.unrouted = [(b"not json", True), (body(reserved("j")), True)]
    rig.keeper.ensure_soon()
    await until(lambda: all(rig.broker.markers))
    epoch = rig.broker.markers[0][0]
    rig.deliver(0, epoch)
    rig.deliver(1, epoch)
    await until(lambda: len(rig.broker.markers[0]) == 2)  # failed, and led again
    assert not await rig.store.barrier_opened(epoch)
    rig.publisher.fail = False
    await rig.settle()
    assert await rig.store.barrier_opened(epoch), "the same epoch, not a new one"
    assert rig.publisher.quarantined and rig.publisher.quarantined[0].startswith("invalid_json")
    assert ("j", "reserved") in rig.recorder.recorded


async def test_flush_returns_once_earlier_events_are_recorded(rig: Rig) -> None:
    rig.recorder.open.clear()
    submit = asyncio.create_task(rig.batcher.submit(submitted("a")))
    flush = asyncio.create_task(rig.batcher.flush())
    await asyncio.sleep(0)  # both handed on
    await until(lambda: rig.batcher._queue.empty())  # "a" is being recorded: the store hangs
    assert not flush.done()
    rig.recorder.open.set()
    await asyncio.wait_for(asyncio.gather(submit, flush), 1)
    assert rig.recorder.recorded == [("a", "submitted")] and rig.batcher.recorded == 1


async def test_a_tracker_stopping_at_a_barrier_records_nothing_held_behind_it(rig: Rig) -> None:
    async with rig.broker.leadership():
        epoch = await rig.store.begin_barrier(FakeClock().now())
    marker = rig.deliver(0, epoch)
    held = rig.deliver(0, body(submitted("behind")))
    await until(lambda: len(rig.ingestor._held.get(0, ())) == 1)  # held behind the marker
    marker.cancel()  # the tracker stops: its handlers are cancelled
    await asyncio.gather(marker, return_exceptions=True)
    await rig.store.open_barrier(epoch, FakeClock().now())
    await asyncio.wait_for(rig.batcher.flush(), 5)  # whatever was handed on is recorded by now
    assert rig.recorder.recorded == [], "the broker delivers it again, after the marker"
    assert isinstance(held.exception(), DeliveryAbandoned), "its handler ends, unacknowledged"
    assert not rig.ingestor.paused(0)

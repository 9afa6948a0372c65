"""``Ingestor.accept_soon``: the worker's fast path agrees with ``accept`` or steps aside.

The partition handler (app/bootstrap/worker.py) hands the common delivery to the batcher
without awaiting it; everything else it awaits through ``accept``. These hold the fast path to
the same outcomes: what it takes is recorded exactly as ``accept`` records it, and it answers
None (touching nothing) for every case ``accept`` treats apart.
"""

from __future__ import annotations

import asyncio

import pytest

from app.domain.events import Completed
from app.ports import WriteRefused
from app.services.batcher import Batcher
from app.services.health import Health
from app.services.ingest import Ingestor
from tests.unit.test_tracking_service import FakePublisher, FlakyRecorder, env, submitted


def _ingestor(recorder: object, **kwargs: object) -> tuple[Ingestor, Batcher, FakePublisher]:
    batcher = Batcher(recorder, Health(), max_wait=0.001)  # type: ignore[arg-type]
    publisher = FakePublisher()
    return Ingestor(batcher, publisher, **kwargs), batcher, publisher  # type: ignore[arg-type]


async def test_a_valid_keyed_event_is_recorded_before_its_future_is_done() -> None:
    recorder = FlakyRecorder(1)  # the first try meets an outage: the future must wait it out
    ingestor, batcher, publisher = _ingestor(recorder)
    batcher.first_backoff = 0.01
    event = submitted("j-1")
    batcher.start()
    try:
        done = ingestor.accept_soon(
            event.model_dump_json().encode(), keyed=True, partition=0, routing_key="job.submitted"
        )
        assert done is not None and not done.done()
        await asyncio.wait_for(done, 5)
    finally:
        await batcher.stop()
    assert [e for batch in recorder.batches for e in batch] == [event]
    assert publisher.quarantined == []


@pytest.mark.parametrize(
    ("body", "keyed", "paused", "rekey"),
    [
        (b"{not json", True, False, False),  # to quarantine: accept does it
        (b'{"type": "submitted"}', True, False, False),  # not an event
        (None, True, True, False),  # the partition is paused: accept holds it
        (None, False, False, True),  # unkeyed, with partitions: accept re-keys it
    ],
)
async def test_what_accept_treats_apart_is_left_to_it(
    body: bytes | None, keyed: bool, paused: bool, rekey: bool
) -> None:
    recorder = FlakyRecorder(0)
    ingestor, batcher, publisher = _ingestor(recorder, rekey_unkeyed=rekey)
    if paused:
        ingestor.pause(0)
    raw = body if body is not None else submitted("j-1").model_dump_json().encode()
    batcher.start()
    try:
        assert ingestor.accept_soon(raw, keyed=keyed, partition=0, routing_key=None) is None
        await batcher.flush()
    finally:
        await batcher.stop()
    assert recorder.batches == [] and publisher.quarantined == []


async def test_an_unkeyed_event_without_partitions_to_rekey_takes_the_fast_path() -> None:
    recorder = FlakyRecorder(0)
    ingestor, batcher, _ = _ingestor(recorder, rekey_unkeyed=False)
    event = submitted("j-1")
    batcher.start()
    try:
        done = ingestor.accept_soon(
            event.model_dump_json().encode(), keyed=False, partition=0, routing_key=None
        )
        assert done is not None
        await asyncio.wait_for(done, 5)
    finally:
        await batcher.stop()
    assert recorder.batches == [[event]]


async def test_a_contradicting_routing_key_is_reported_once() -> None:
    seen: list[str] = []
    ingestor, batcher, _ = _ingestor(FlakyRecorder(0), misrouted=seen.append)
    event = Completed(**env("j-1"), node_id="n")  # type: ignore[arg-type]
    batcher.start()
    try:
        done = ingestor.accept_soon(
            event.model_dump_json().encode(), keyed=True, partition=0, routing_key="job.failed"
        )
        assert done is not None
        await asyncio.wait_for(done, 5)
    finally:
        await batcher.stop()
    assert seen == ["completed"]


async def test_a_refused_write_fails_the_future_and_refused_quarantines_it() -> None:
    class Refusing:
        async def __call__(self, events: object) -> None:
            raise WriteRefused("check constraint")

    ingestor, batcher, publisher = _ingestor(Refusing())
    body = submitted("j-1").model_dump_json().encode()
    batcher.start()
    try:
        done = ingestor.accept_soon(body, keyed=True, partition=0, routing_key=None)
        assert done is not None
        with pytest.raises(WriteRefused) as refused:
            await asyncio.wait_for(done, 5)
        await ingestor.refused(body, refused.value)
    finally:
        await batcher.stop()
    assert publisher.quarantined == [(body, "refused_by_store: check constraint")]

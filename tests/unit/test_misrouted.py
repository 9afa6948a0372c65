"""A routing key that contradicts the body's type: recorded as the body says, and reported."""

from __future__ import annotations

import logging

import pytest

from app.bootstrap.metrics import Metrics
from app.domain.events import Completed
from app.services.batcher import Batcher
from app.services.health import Health
from app.services.ingest import Ingestor
from tests.unit.test_tracking_service import FakePublisher, FlakyRecorder, env


@pytest.mark.parametrize(
    ("routing_key", "reported"),
    [("job.failed", ["completed"]), ("job.completed", []), (None, []), ("job.#", ["completed"])],
)
async def test_the_body_wins_and_a_contradicting_routing_key_is_reported(
    routing_key: str | None, reported: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    event = Completed(**env("j-1"), node_id="n")  # type: ignore[arg-type]
    recorder, publisher, seen = FlakyRecorder(0), FakePublisher(), []
    batcher = Batcher(recorder, Health(), max_wait=0.001)
    ingestor = Ingestor(batcher, publisher, misrouted=seen.append)
    batcher.start()
    try:
        with caplog.at_level(logging.WARNING, "jobtrail.ingest"):
            await ingestor.accept(event.model_dump_json().encode(), routing_key=routing_key)
    finally:
        await batcher.stop()
    assert [e for batch in recorder.batches for e in batch] == [event]  # recorded, as completed
    assert publisher.quarantined == []
    assert seen == reported
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    if reported:
        assert warnings == [
            f"event {event.event_id} of job j-1 has type completed but routing key "
            f"{routing_key}: recorded as its body says"
        ]
    else:
        assert warnings == []


def test_metrics_count_misrouted_events_by_type() -> None:
    metrics = Metrics()
    metrics.misrouted("completed")
    metrics.misrouted("completed")
    value = metrics.registry.get_sample_value(
        "jobtrail_misrouted_events_total", {"type": "completed"}
    )
    assert value == 2
    zero = metrics.registry.get_sample_value("jobtrail_misrouted_events_total", {"type": "failed"})
    assert zero == 0

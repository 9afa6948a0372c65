"""Three trackers share the partitions; one is killed mid-stream; nothing is lost or reordered."""

from __future__ import annotations

import time
from pathlib import Path

from tests.e2e.harness import Tracker, tracker_env
from tests.e2e.test_crash_and_integrity import _publish_all, _stream, settled_counts


def test_three_trackers_one_killed_mid_stream(
    mongo_url: str, pg_url: str, rabbit_url: str, tmp_path: Path
) -> None:
    trackers = []
    for n in range(3):
        workdir = tmp_path / f"tracker-{n}"
        workdir.mkdir()
        env = tracker_env(rabbit_url, mongo_url, pg_url, workdir)
        trackers.append(Tracker(env, workdir))
    env = trackers[0].env
    events = _stream(300)
    published = {str(e.event_id) for e in events}
    try:
        for tracker in trackers:
            tracker.start()
        _publish_all(rabbit_url, events[:450])
        time.sleep(0.3)
        trackers[0].kill()  # it owned some partitions: their standby consumers take over
        _publish_all(rabbit_url, events[450:])
        counts = settled_counts(env, published, rabbit_url)
    finally:
        for tracker in trackers:
            tracker.stop()
    assert counts == {
        "lost": 0,
        "duplicated": 0,
        "gaps": 0,
        "mismatched": 0,
        "anomalies": 0,
        "jobs": 300,
    }
    survivors = [t.log_text() for t in trackers[1:]]
    assert all("jobtrail serving" in text for text in survivors)

"""Three trackers share the partitions; one is killed mid-stream; nothing is lost or reordered."""

from __future__ import annotations

import time
from pathlib import Path

from tests import servers
from tests.e2e.harness import Tracker, tracker_env, wait_for
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
        shared = wait_for(
            lambda: _owners(rabbit_url, trackers) if _shared_by(rabbit_url, trackers, 3) else None,
            "the three trackers to share the partitions",
        )
        _publish_all(rabbit_url, events[:450])
        time.sleep(0.3)
        trackers[0].kill()  # its partitions go to the others once its heartbeat is missed
        _publish_all(rabbit_url, events[450:])
        counts = settled_counts(env, published, rabbit_url)
        taken_over = wait_for(
            lambda: _owners(rabbit_url, trackers) if _shared_by(rabbit_url, trackers, 2) else None,
            "the two survivors to own every partition",
        )
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
    assert sorted(len(mine) for mine in shared.values()) == [1, 1, 2], shared
    assert set(taken_over) == {1, 2}, taken_over


def _owners(rabbit_url: str, trackers: list[Tracker]) -> dict[int, set[int]]:
    """Which tracker (by index) is the active consumer of which partition (management API)."""
    pids = {t.proc.pid: n for n, t in enumerate(trackers) if t.proc is not None}
    owners: dict[int, set[int]] = {}
    for queue, names in servers.active_consumers(rabbit_url).items():
        if not queue.startswith("jobtrail.tracker."):
            continue
        assert len(names) == 1, f"{queue} has {len(names)} active consumers: {names}"
        # Connection names read "jobtrail <host>-<pid>-<random> partition <n>".
        pid = int(names[0].split()[1].split("-")[-2])
        owners.setdefault(pids[pid], set()).add(int(queue.rsplit(".", 1)[1]))
    return owners


def _shared_by(rabbit_url: str, trackers: list[Tracker], count: int) -> bool:
    owners = _owners(rabbit_url, trackers)
    return len(owners) == count and sorted(p for ps in owners.values() for p in ps) == [0, 1, 2, 3]

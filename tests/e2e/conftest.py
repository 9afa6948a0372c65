from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import servers
from tests.e2e.harness import Tracker, tracker_env


@pytest.fixture(scope="module")
def stack(
    mongo_base_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """A running tracker on the production path: MongoDB-speaking log, PostgreSQL projections."""
    workdir = tmp_path_factory.mktemp("tracker")
    mongo = servers.mongo_database_url(mongo_base_url, f"jt_{uuid.uuid4().hex[:12]}")
    with servers.rabbit_vhost() as rabbit, servers.pg_database() as pg:
        env = tracker_env(rabbit, mongo, pg, workdir)
        tracker = Tracker(env, workdir)
        tracker.start()
        try:
            yield env
        finally:
            code = tracker.stop()
            assert code == 0, tracker.log_text()[-3000:]


@pytest.fixture
def fresh_stack(mongo_url: str, pg_url: str, rabbit_url: str, tmp_path: Path) -> Iterator[Tracker]:
    """A tracker of the test's own (not started), for crash and restart tests."""
    tracker = Tracker(tracker_env(rabbit_url, mongo_url, pg_url, tmp_path), tmp_path)
    yield tracker
    tracker.stop()

"""A tracker killed with SIGKILL mid-stream loses nothing; tampering with the log is detected."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from pymongo import MongoClient

from app.adapters.log_factory import open_event_log
from app.adapters.sql_store import SqlProjectionStore
from app.client import JobtrailClient
from app.domain.events import Completed, Failed, JobEvent, Reserved, Submitted
from app.domain.policy import Policy
from app.services.projection import job_row
from app.services.tracking import fold_history
from tests import servers
from tests.e2e.harness import TEST_POLICY, Tracker, cli, new_job_id, publish, wait_for, wait_status


def _stream(jobs: int) -> list[JobEvent]:
    """Per job: submitted, reserved, then completed — or a non-retryable failure for every 7th."""
    events: list[JobEvent] = []
    now = datetime.now(UTC)  # producers' clocks agree with Jobtrail's: no skew anomalies
    for n in range(jobs):
        job = f"crash-{n:04d}"
        env = {"job_id": job, "occurred_at": now, "source": "load"}
        events.append(
            Submitted(
                event_id=uuid.uuid4(),
                attempt=1,
                job_type="batch",
                model="m",
                priority="bulk",
                tenant="t",
                pool="p",
                queue="jobtrail.work.p.batch",
                payload={"n": n},
                **env,
            )
        )
        events.append(Reserved(event_id=uuid.uuid4(), attempt=1, node_id="n1", **env))
        if n % 7 == 0:
            events.append(
                Failed(
                    event_id=uuid.uuid4(),
                    attempt=1,
                    node_id="n1",
                    error_code="bad",
                    retryable=False,
                    **env,
                )
            )
        else:
            events.append(Completed(event_id=uuid.uuid4(), attempt=1, node_id="n1", **env))
    return events


def _publish_all(rabbit: str, events: list[JobEvent], duplicate_every: int = 10) -> None:
    async def go() -> None:
        async with JobtrailClient(rabbit, "load") as client:
            for i, event in enumerate(events):
                await client.publish(event)
                if i % duplicate_every == 0:
                    await client.publish(event)  # a producer retry: the same event again

    asyncio.run(go())


def partitions_idle(rabbit: str) -> bool:
    """Every partition queue and the unrouted queue empty, nothing unacknowledged (management API)."""
    vhost = rabbit.rsplit("/", 1)[1]
    with httpx.Client(base_url=servers.RABBIT_API, auth=servers.RABBIT_API_AUTH, timeout=10) as api:
        queues = [
            q
            for q in api.get(f"/queues/{vhost}").json()
            if q["name"].startswith("jobtrail.tracker.") or q["name"] == "jobtrail.unrouted"
        ]
    return bool(queues) and all(
        q.get("messages", 1) == 0 and q.get("messages_unacknowledged", 1) == 0 for q in queues
    )


async def _check_log_and_projection(env: dict[str, str], published: set[str]) -> dict[str, int]:
    log = open_event_log(env["JOBTRAIL_LOG_URL"])
    store = SqlProjectionStore(env["JOBTRAIL_SQL_URL"])
    policy = Policy.from_toml(TEST_POLICY)
    try:
        seen: dict[str, int] = {}
        by_job: dict[str, list] = {}
        async for recorded in log.scan():
            key = str(recorded.event.event_id)
            seen[key] = seen.get(key, 0) + 1
            by_job.setdefault(recorded.job_id, []).append(recorded)
        mismatched = anomalies = gaps = 0
        for job_id, events in by_job.items():
            gaps += [e.seq for e in events] != list(range(1, len(events) + 1))
            state = fold_history(events, policy)
            anomalies += len(state.anomalies)
            stored = await store.get_job(job_id)
            expected = job_row(state, policy)
            mismatched += stored != expected
        return {
            "lost": len(published - seen.keys()),
            "duplicated": sum(1 for c in seen.values() if c > 1),
            "gaps": gaps,
            "mismatched": mismatched,
            "anomalies": anomalies,
            "jobs": len(by_job),
        }
    finally:
        await log.close()
        await store.close()


def settled_counts(env: dict[str, str], published: set[str], rabbit: str) -> dict[str, int]:
    """The log/projection counts once every published event is in the log and the queues idle."""

    def all_recorded() -> dict[str, int] | None:
        counts = asyncio.run(_check_log_and_projection(env, published))
        return counts if counts["lost"] == 0 else None

    wait_for(all_recorded, "every published event to be recorded", timeout=180)
    wait_for(lambda: partitions_idle(rabbit), "the partition queues to drain", timeout=60)
    return asyncio.run(_check_log_and_projection(env, published))


def test_sigkill_mid_stream_loses_and_duplicates_nothing(fresh_stack: Tracker) -> None:
    env = fresh_stack.env
    rabbit = env["JOBTRAIL_RABBIT_URL"]
    events = _stream(300)
    published = {str(e.event_id) for e in events}
    fresh_stack.start()
    _publish_all(rabbit, events[:450])
    time.sleep(0.3)
    fresh_stack.kill()  # mid-stream: some events recorded, some in flight, some not yet delivered
    _publish_all(rabbit, events[450:])
    fresh_stack.start()
    time.sleep(0.5)
    fresh_stack.kill()  # and once more, while catching up
    fresh_stack.start()
    counts = settled_counts(env, published, rabbit)
    assert counts == {
        "lost": 0,
        "duplicated": 0,
        "gaps": 0,
        "mismatched": 0,
        "anomalies": 0,
        "jobs": 300,
    }
    code, out = cli(env, "verify")
    assert code == 0, out
    assert "BROKEN" not in out


def test_verify_fails_after_one_stored_event_is_altered(fresh_stack: Tracker) -> None:
    env = fresh_stack.env
    fresh_stack.start()
    job = new_job_id()
    publish(
        env["JOBTRAIL_RABBIT_URL"],
        lambda c: c.submit(job, job_type="sync", model="m", priority="bulk", tenant="t", pool="p"),
        lambda c: c.reserved(job, 1, "n1"),
        lambda c: c.completed(job, 1, "n1"),
    )
    wait_status(env, job, "completed")
    code, _ = cli(env, "verify")
    assert code == 0
    mongo: MongoClient[dict[str, object]] = MongoClient(env["JOBTRAIL_LOG_URL"])
    try:
        events = mongo.get_default_database()["events"]
        stored = events.find_one({"job_id": job, "seq": 2})
        assert stored is not None
        tampered = str(stored["data"]).replace('"node_id":"n1"', '"node_id":"n2"')
        assert tampered != stored["data"]
        events.update_one({"_id": stored["_id"]}, {"$set": {"data": tampered}})
    finally:
        mongo.close()
    code, out = cli(env, "verify")
    assert code == 1
    assert f"BROKEN {job} at seq 2" in out
    code, out = cli(env, "verify", "--job", job)
    assert code == 1 and f"BROKEN {job} at seq 2" in out


@pytest.fixture
def embedded(tmp_path: Path, rabbit_url: str) -> Iterator[Tracker]:
    """The embedded defaults: SQLite log and SQLite projections, no MongoDB."""
    from tests.e2e.harness import tracker_env

    env = tracker_env(rabbit_url, "", "", tmp_path)
    del env["JOBTRAIL_LOG_URL"], env["JOBTRAIL_SQL_URL"]
    tracker = Tracker(env, tmp_path)
    tracker.start()
    yield tracker
    assert tracker.stop() == 0


def test_embedded_defaults_track_a_job_and_say_so_loudly(embedded: Tracker) -> None:
    job = new_job_id()
    env = embedded.env | {
        "JOBTRAIL_LOG_URL": f"sqlite+aiosqlite:///{embedded.workdir / 'var/jobtrail-log.db'}",
        "JOBTRAIL_SQL_URL": f"sqlite+aiosqlite:///{embedded.workdir / 'var/jobtrail.db'}",
    }
    publish(
        env["JOBTRAIL_RABBIT_URL"],
        lambda c: c.submit(
            job, job_type="stream", model="m", priority="test", tenant="t", pool="p"
        ),
        lambda c: c.reserved(job, 1, "n1"),
        lambda c: c.completed(job, 1, "n1"),
    )
    wait_status(env, job, "completed")
    assert "EMBEDDED MODE" in embedded.log_text()
    code, _ = cli(env, "verify")
    assert code == 0

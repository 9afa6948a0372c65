"""The long-history scenario: events for jobs that already hold a long history, against the same
number of events for new jobs, in the same database and the same run.

A stream job heartbeats every few seconds for hours: its tracker must not pay more per event the
longer the job lives. The old jobs' histories are appended to the log directly (fast) and then
settled once by a ``Tracker``, which leaves the projection as a tracker that had recorded them
would; then both event sets go through the whole pipeline (broker, batcher, log, fold,
projection) by ``jobtrail_ingest_rate``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from itertools import chain, islice

from app.adapters.clock import SystemClock
from app.adapters.log_factory import open_event_log
from app.adapters.sql_store import SqlProjectionStore
from app.bench.databases import scratch_postgres
from app.bench.rabbit_setup import scratch_vhost
from app.bench.scenarios import jobtrail_ingest_rate
from app.bootstrap import load_policy, prepare_storage
from app.domain.events import Heartbeat, JobEvent, Reserved, Submitted
from app.services.tracking import Tracker
from app.settings import Settings

HISTORY_JOBS = 20
SEED_CHUNK = 5000
NODE = "node-long"


def _opening(job_id: str, at: datetime) -> list[JobEvent]:
    """A stream job submitted and reserved, with a lease that outlasts the run."""
    env = {"job_id": job_id, "occurred_at": at, "source": "bench", "attempt": 1}
    return [
        Submitted(
            event_id=uuid.uuid4(),
            job_type="stream",
            model="llama-3-70b",
            priority="bulk",
            tenant="tenant-7",
            pool="gpu-a",
            queue="jobtrail.work.gpu-a.stream",
            payload={"stream": job_id},
            **env,
        ),
        Reserved(event_id=uuid.uuid4(), node_id=NODE, lease_seconds=86_400, **env),
    ]


def _heartbeats(job_ids: list[str], rounds: int, at: datetime) -> Iterator[JobEvent]:
    """``rounds`` heartbeats of every job, one of each job per round, as live jobs send them."""
    for _ in range(rounds):
        for job_id in job_ids:
            yield Heartbeat(
                event_id=uuid.uuid4(),
                job_id=job_id,
                occurred_at=at,
                source="bench",
                attempt=1,
                node_id=NODE,
            )


def new_job_events(job_ids: list[str], count: int) -> list[JobEvent]:
    """``count`` events of new jobs: each submitted and reserved, then heart-beaten."""
    at = datetime.now(UTC)
    opened = [event for job_id in job_ids for event in _opening(job_id, at)]
    rounds = -(-max(count - len(opened), 0) // len(job_ids))
    return list(islice(chain(opened, _heartbeats(job_ids, rounds, at)), count))


def heartbeats_of(job_ids: list[str], count: int) -> list[JobEvent]:
    """``count`` heartbeats of the jobs, interleaved."""
    rounds = -(-count // len(job_ids))
    return list(islice(_heartbeats(job_ids, rounds, datetime.now(UTC)), count))


def _chunks(events: Iterable[JobEvent], size: int) -> Iterator[list[JobEvent]]:
    iterator = iter(events)
    while chunk := list(islice(iterator, size)):
        yield chunk


async def seed_long_histories(settings: Settings, job_ids: list[str], events_per_job: int) -> None:
    """Give each job ``events_per_job`` events in the log, then settle them all once."""
    log = open_event_log(settings.log_url)
    store = SqlProjectionStore(settings.sql_url)
    try:
        at = datetime.now(UTC)
        opened = [event for job_id in job_ids for event in _opening(job_id, at)]
        stream = chain(opened, _heartbeats(job_ids, events_per_job - 2, at))
        for chunk in _chunks(stream, SEED_CHUNK):
            await log.append_many(chunk, at)
        await Tracker(log, store, load_policy(settings), SystemClock()).settle(job_ids)
    finally:
        await store.close()
        await log.close()


async def long_history_rates(
    rabbit: tuple[str, str],
    pg_admin_url: str,
    events_per_job: int,
    count: int,
    run: int,
    progress: Callable[[str], None],
) -> tuple[float, float]:
    """Events/s of ``count`` events of new jobs, and of ``count`` heartbeats of jobs that hold
    ``events_per_job`` events each, in one database (the order alternates with ``run``)."""
    rabbit_url, rabbit_api = rabbit
    async with scratch_postgres(pg_admin_url) as sql:
        settings = Settings(
            rabbit_url=rabbit_url, log_url=sql, sql_url=sql, prefetch=1024, batch_size=1000
        )
        await prepare_storage(settings)
        old = [f"long-{run}-{n:02d}" for n in range(HISTORY_JOBS)]
        new = [f"new-{run}-{n:02d}" for n in range(HISTORY_JOBS)]
        progress(f"run {run + 1}: {HISTORY_JOBS} jobs of {events_per_job:,} events each")
        await seed_long_histories(settings, old, events_per_job)
        plan = [("new", new_job_events(new, count)), ("old", heartbeats_of(old, count))]
        rates: dict[str, float] = {}
        for name, events in plan if run % 2 == 0 else plan[::-1]:
            progress(f"run {run + 1}: {count:,} events of the {name} jobs")
            async with scratch_vhost(rabbit_url, rabbit_api) as vhost:
                vhost_settings = settings.model_copy(update={"rabbit_url": vhost})
                rates[name] = await jobtrail_ingest_rate(vhost_settings, events)
    return rates["new"], rates["old"]

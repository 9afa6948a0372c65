"""The benchmark's events: realistic ~300-byte lifecycle events for many jobs."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from app.domain.events import Completed, JobEvent, Reserved, Submitted


def lifecycle_events(count: int, *, run: str) -> list[JobEvent]:
    """``count`` events: submitted, reserved, completed per job, interleaved as in real traffic."""
    now = datetime.now(UTC)
    jobs = max(-(-count // 3), 1)  # enough jobs for ``count`` events; the last may be cut short
    per_job: list[list[JobEvent]] = []
    for n in range(jobs):
        job = f"bench-{run}-{n:07d}"
        env = {"job_id": job, "occurred_at": now, "source": "bench"}
        per_job.append(
            [
                Submitted(
                    event_id=uuid.uuid4(),
                    attempt=1,
                    job_type="batch",
                    model="llama-3-70b",
                    priority="bulk",
                    tenant="tenant-7",
                    pool="gpu-a",
                    queue="jobtrail.work.gpu-a.batch",
                    payload={"prompt_ref": f"s3://prompts/{n}"},
                    **env,
                ),
                Reserved(event_id=uuid.uuid4(), attempt=1, node_id=f"node-{n % 50:02d}", **env),
                Completed(
                    event_id=uuid.uuid4(),
                    attempt=1,
                    node_id=f"node-{n % 50:02d}",
                    duration_ms=850,
                    **env,
                ),
            ]
        )
    # Interleave in waves of 100 jobs, so a batch holds many jobs, each in order.
    events: list[JobEvent] = []
    for start in range(0, jobs, 100):
        wave = per_job[start : start + 100]
        for step in range(3):
            events.extend(job[step] for job in wave)
    return events[:count]

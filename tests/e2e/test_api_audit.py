"""Auditors' API: the fleet as of an instant, and one job's chain verified."""

from __future__ import annotations

from datetime import UTC, datetime

from tests.e2e.harness import new_job_id, publish, status, wait_for, wait_status
from tests.e2e.test_operators import READER, api_call


def test_fleet_as_of_counts_jobs_in_each_state_at_an_instant(stack: dict[str, str]) -> None:
    rabbit = stack["JOBTRAIL_RABBIT_URL"]
    pool = f"fleet-{new_job_id()}"
    jobs = [new_job_id() for _ in range(3)]
    for job in jobs:
        publish(
            rabbit,
            lambda c, j=job: c.submit(
                j, job_type="batch", model="m", priority="bulk", tenant="t", pool=pool
            ),
        )
        wait_for(lambda j=job: status(stack, j), "the submission")
    publish(rabbit, lambda c: c.reserved(jobs[0], 1, "n1"))
    wait_status(stack, jobs[0], "reserved")
    before_completion = datetime.now(UTC)
    publish(rabbit, lambda c: c.completed(jobs[0], 1, "n1"))
    wait_status(stack, jobs[0], "completed")
    answer = api_call(
        stack,
        "GET",
        f"/fleet?at={before_completion.isoformat().replace('+', '%2B')}&by=pool&ids=true",
        READER,
    )
    assert answer.status_code == 200, answer.text
    mine = {g["status"]: g for g in answer.json()["groups"] if g["key"] == pool}
    assert mine["reserved"]["count"] == 1 and mine["reserved"]["job_ids"] == [jobs[0]]
    assert mine["queued"]["count"] == 2 and sorted(mine["queued"]["job_ids"]) == sorted(jobs[1:])
    now = datetime.now(UTC).isoformat().replace("+", "%2B")
    later = api_call(stack, "GET", f"/fleet?at={now}&status=completed&by=pool", READER).json()
    assert {"key": pool, "status": "completed", "count": 1} in later["groups"]
    assert api_call(stack, "GET", "/fleet?at=yesterday", READER).status_code == 422
    assert (
        api_call(stack, "GET", "/fleet?at=2026-01-01T00:00:00", READER).status_code == 422
    )  # no offset
    assert api_call(stack, "GET", f"/fleet?at={now}", None).status_code == 401


def test_one_jobs_chain_is_verified_through_the_api(stack: dict[str, str]) -> None:
    job = new_job_id()
    publish(
        stack["JOBTRAIL_RABBIT_URL"],
        lambda c: c.submit(job, job_type="sync", model="m", priority="test", tenant="t", pool="p"),
    )
    wait_for(lambda: status(stack, job), "the submission")
    answer = api_call(stack, "GET", f"/jobs/{job}/verify", READER)
    assert answer.json() == {"job_id": job, "intact": True, "entries": 1}
    assert api_call(stack, "GET", "/jobs/never-seen/verify", READER).status_code == 404
    assert api_call(stack, "GET", "/jobs/a%2Fb/verify", READER).status_code in (404, 422)

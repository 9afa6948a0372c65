"""Operators' actions end to end: redrive and cancel, recorded as events, via the CLI and the API."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx

from app.bootstrap import open_readers
from app.entrypoints.api import create_api
from app.entrypoints.api_auth import Tokens
from app.settings import Settings
from tests.e2e.harness import (
    cli,
    get_messages,
    history,
    new_job_id,
    publish,
    status,
    wait_for,
    wait_status,
)

OPERATOR = "operator-token-0123456789"
READER = "reader-token-0123456789ab"


def dead_letter(stack: dict[str, str], pool: str) -> str:
    rabbit = stack["JOBTRAIL_RABBIT_URL"]
    job = new_job_id()
    publish(
        rabbit,
        lambda c: c.submit(
            job,
            job_type="sync",
            model="m",
            priority="bulk",
            tenant="t",
            pool=pool,
            payload={"p": 1},
        ),
    )
    wait_for(lambda: status(stack, job), "the submission")
    publish(
        rabbit,
        lambda c: c.reserved(job, 1, "n1"),
        lambda c: c.failed(job, 1, "n1", "bad_input", retryable=False),
    )
    wait_status(stack, job, "dead_lettered")
    return job


def test_redrive_dry_run_lists_then_redrive_republishes_with_the_actor(
    stack: dict[str, str],
) -> None:
    pool = f"redrive-{new_job_id()}"
    jobs = sorted(dead_letter(stack, pool) for _ in range(2))
    code, out = cli(
        stack,
        "redrive",
        "--reason",
        "non_retryable",
        "--pool",
        pool,
        "--since",
        "1h",
        "--actor",
        "alice",
        "--dry-run",
    )
    assert code == 0, out
    assert sorted(out.split()) == jobs
    assert all(status(stack, j)["status"] == "dead_lettered" for j in jobs)  # type: ignore[index]
    code, out = cli(
        stack,
        "redrive",
        "--reason",
        "retries_exhausted",
        "--pool",
        pool,
        "--actor",
        "alice",
        "--dry-run",
    )
    assert (code, out.strip()) == (0, "")  # another reason matches nothing
    code, out = cli(
        stack, "redrive", "--reason", "non_retryable", "--pool", pool, "--actor", "alice"
    )
    assert code == 0, out
    for job in jobs:
        row = wait_status(stack, job, "queued")
        assert row["attempt"] == 2
        last = history(stack, job)[-1]
        assert (last["type"], last["actor"], last["attempt"]) == ("redriven", "alice", 2)
    queue = f"jobtrail.work.{pool}.sync"
    bodies = wait_for(
        lambda: [
            json.loads(m.body)
            for m in get_messages(stack["JOBTRAIL_RABBIT_URL"], queue)
            if json.loads(m.body)["attempt"] == 2
        ],
        "the redriven job messages",
    )
    assert sorted(b["job_id"] for b in bodies) == jobs


def _failed_once(stack: dict[str, str], job: str, cooldown: float) -> None:
    """Submit ``job`` and fail its first attempt (retryable): it cools down ``cooldown`` s,
    give or take the policy's 20 % jitter."""
    rabbit = stack["JOBTRAIL_RABBIT_URL"]
    publish(
        rabbit,
        lambda c: c.submit(
            job,
            job_type="sync",
            model="m",
            priority="bulk",
            tenant="t",
            pool="cancel-pool",
            retry={"initial_interval_seconds": cooldown},
        ),
    )
    wait_for(lambda: status(stack, job), "the submission")
    publish(rabbit, lambda c: c.reserved(job, 1, "n1"), lambda c: c.failed(job, 1, "n1", "oom"))
    wait_status(stack, job, "cooling_down")


def test_cancel_stops_a_cooling_down_job_from_being_retried(stack: dict[str, str]) -> None:
    job, later = new_job_id(), new_job_id("later")
    _failed_once(stack, job, 1.5)  # its retry would fall due within 1.8 s
    code, out = cli(stack, "cancel", job, "--actor", "bob", "--reason", "customer asked")
    assert code == 0, out
    row = wait_status(stack, job, "cancelled")
    assert row["attempt"] == 1
    # A job failed after the cancel, cooling down at least 2.4 s: once its retry fired, the
    # timer loop was past the moment the cancelled job's retry would have come.
    _failed_once(stack, later, 3.0)
    wait_for(
        lambda: "retried" in [e["type"] for e in history(stack, later)], "the later job's retry"
    )
    assert [e["type"] for e in history(stack, job)] == [
        "submitted",
        "reserved",
        "failed",
        "cancelled",
    ]
    assert history(stack, job)[-1]["actor"] == "bob"
    code, out = cli(stack, "cancel", job, "--actor", "bob")
    assert code == 1
    assert out.strip() == f"jobtrail: job {job} is cancelled: nothing to cancel"


def api_call(
    stack: dict[str, str], method: str, path: str, token: str | None, body: Any = None
) -> httpx.Response:
    async def go() -> httpx.Response:
        settings = Settings(
            rabbit_url=stack["JOBTRAIL_RABBIT_URL"],
            log_url=stack["JOBTRAIL_LOG_URL"],
            sql_url=stack["JOBTRAIL_SQL_URL"],
        )
        readers = open_readers(settings)
        app = create_api(settings, readers, tokens=Tokens.of(read=READER, operator=OPERATOR))
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            async with (
                app.router.lifespan_context(app),
                httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=app), base_url="http://jobtrail"
                ) as client,
            ):
                return await client.request(method, path, json=body, headers=headers)
        finally:
            await readers.close()

    return asyncio.run(go())


def test_operator_endpoints_need_the_operator_token_and_record_the_actor(
    stack: dict[str, str],
) -> None:
    pool = f"api-{new_job_id()}"
    job = dead_letter(stack, pool)
    body = {"actor": "carol", "pool": pool, "reason": "non_retryable"}
    assert api_call(stack, "POST", "/redrive", None, body).status_code == 401
    assert api_call(stack, "POST", "/redrive", READER, body).status_code == 403
    dry = api_call(stack, "POST", "/redrive", OPERATOR, body | {"dry_run": True})
    assert (dry.status_code, dry.json()) == (200, {"dry_run": True, "job_ids": [job]})
    assert api_call(stack, "POST", "/redrive", OPERATOR, body | {"bogus": 1}).status_code == 422
    done = api_call(stack, "POST", "/redrive", OPERATOR, body)
    assert done.status_code == 200 and done.json()["job_ids"] == [job]
    wait_status(stack, job, "queued")
    cancel = api_call(
        stack, "POST", f"/jobs/{job}/cancel", OPERATOR, {"actor": "carol", "reason": "r"}
    )
    assert cancel.status_code == 200, cancel.text
    wait_status(stack, job, "cancelled")
    again = api_call(stack, "POST", f"/jobs/{job}/cancel", OPERATOR, {"actor": "carol"})
    assert again.status_code == 409
    assert (
        api_call(stack, "POST", "/jobs/nope-404/cancel", OPERATOR, {"actor": "carol"}).status_code
        == 404
    )
    actors = [(e["type"], e.get("actor")) for e in history(stack, job)[-2:]]
    assert actors == [("redriven", "carol"), ("cancelled", "carol")]

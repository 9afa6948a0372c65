"""Each lifecycle guarantee, end to end: events in through RabbitMQ, state out through the CLI."""

from __future__ import annotations

import json
import time
from datetime import datetime

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

SUBMIT = {
    "job_type": "sync",
    "model": "llama-3-8b",
    "priority": "urgent",
    "tenant": "acme",
    "pool": "gpu-a",
}


def submit(env: dict[str, str], job_id: str, **overrides: object) -> None:
    fields = SUBMIT | overrides
    publish(
        env["JOBTRAIL_RABBIT_URL"], lambda c: c.submit(job_id, payload={"prompt": "hi"}, **fields)
    )
    wait_for(lambda: status(env, job_id), f"{job_id} to be recorded")


def test_job_completes_on_first_try(stack: dict[str, str]) -> None:
    job = new_job_id()
    submit(stack, job)
    publish(
        stack["JOBTRAIL_RABBIT_URL"],
        lambda c: c.reserved(job, 1, "node-1"),
        lambda c: c.completed(job, 1, "node-1", duration_ms=120),
    )
    row = wait_status(stack, job, "completed")
    assert (row["attempt"], row["node_id"], row["anomalies"]) == (1, "node-1", 0)
    assert [e["type"] for e in history(stack, job)] == ["submitted", "reserved", "completed"]


def test_retryable_failure_cools_down_then_retries_and_completes(stack: dict[str, str]) -> None:
    rabbit = stack["JOBTRAIL_RABBIT_URL"]
    job = new_job_id()
    queue = f"jobtrail.work.retry-{job}.sync"
    submit(stack, job, pool=f"retry-{job}", retry={"initial_interval_seconds": 2.0})
    first = get_messages(rabbit, queue, wait=1.0)
    assert [json.loads(m.body)["attempt"] for m in first] == [1]
    publish(
        rabbit,
        lambda c: c.reserved(job, 1, "node-1"),
        lambda c: c.failed(job, 1, "node-1", "oom", "out of memory"),
    )
    row = wait_status(stack, job, "cooling_down")
    assert row["last_error_code"] == "oom"
    cooldown_ends = datetime.fromisoformat(row["next_deadline_at"])
    assert row["deadline_kind"] == "cooldown"
    retried = wait_status(stack, job, "queued", timeout=15)
    assert retried["attempt"] == 2
    events = history(stack, job)
    retry_event = next(e for e in events if e["type"] == "retried")
    assert (
        datetime.fromisoformat(retry_event["recorded_at"]) >= cooldown_ends
    )  # not before the cooldown
    republished = wait_for(lambda: get_messages(rabbit, queue), "the retried job message")
    body = json.loads(republished[0].body)
    assert body == {"job_id": job, "attempt": 2, "payload": {"prompt": "hi"}}
    assert republished[0].headers["x-jobtrail-attempt"] == 2
    publish(rabbit, lambda c: c.reserved(job, 2, "node-2"), lambda c: c.completed(job, 2, "node-2"))
    done = wait_status(stack, job, "completed")
    assert (done["attempt"], done["node_id"]) == (2, "node-2")


def test_lease_running_out_expires_and_retries(stack: dict[str, str]) -> None:
    rabbit = stack["JOBTRAIL_RABBIT_URL"]
    job = new_job_id()
    submit(stack, job)
    publish(rabbit, lambda c: c.reserved(job, 1, "slow-node", lease_seconds=1.0))
    wait_for(
        lambda: (status(stack, job) or {}).get("attempt") == 2, "the retry after the lease", 20
    )
    types = [(e["type"], e.get("reason")) for e in history(stack, job)]
    assert ("expired", "lease") in types
    assert types[-1] == ("retried", None)
    assert status(stack, job)["attempt"] == 2  # type: ignore[index]


def test_retries_exhausted_dead_letters_into_jobtrail_dead(stack: dict[str, str]) -> None:
    rabbit = stack["JOBTRAIL_RABBIT_URL"]
    job = new_job_id()
    submit(stack, job, max_attempts=2, retry={"initial_interval_seconds": 0.2})
    publish(
        rabbit, lambda c: c.reserved(job, 1, "n1"), lambda c: c.failed(job, 1, "n1", "cuda_error")
    )
    wait_for(lambda: (status(stack, job) or {}).get("attempt") == 2, "attempt 2")
    publish(
        rabbit, lambda c: c.reserved(job, 2, "n1"), lambda c: c.failed(job, 2, "n1", "cuda_error")
    )
    row = wait_status(stack, job, "dead_lettered")
    assert row["terminal_reason"] == "retries_exhausted"
    dead = wait_for(
        lambda: [
            m for m in get_messages(rabbit, "jobtrail.dead") if json.loads(m.body)["job_id"] == job
        ],
        "the job in jobtrail.dead",
    )
    assert json.loads(dead[0].body)["reason"] == "retries_exhausted"
    assert dead[0].headers["x-jobtrail-reason"] == "retries_exhausted"


def test_non_retryable_failure_dead_letters_at_once(stack: dict[str, str]) -> None:
    rabbit = stack["JOBTRAIL_RABBIT_URL"]
    job = new_job_id()
    submit(stack, job, max_attempts=5)
    publish(
        rabbit,
        lambda c: c.reserved(job, 1, "n1"),
        lambda c: c.failed(job, 1, "n1", "bad_prompt", retryable=False),
    )
    row = wait_status(stack, job, "dead_lettered")
    assert (row["terminal_reason"], row["attempt"]) == ("non_retryable", 1)


def test_ttl_running_out_before_reservation_expires_the_job(stack: dict[str, str]) -> None:
    job = new_job_id()
    submit(stack, job, ttl_seconds=1.0)
    row = wait_status(stack, job, "expired", timeout=15)
    assert row["terminal_reason"] == "ttl"
    assert [e["type"] for e in history(stack, job)] == ["submitted", "expired"]


def test_repeated_failures_reroute_to_the_fallback_pool(stack: dict[str, str]) -> None:
    rabbit = stack["JOBTRAIL_RABBIT_URL"]
    job = new_job_id()
    submit(stack, job, pool="flaky", retry={"initial_interval_seconds": 0.2})
    publish(
        rabbit, lambda c: c.reserved(job, 1, "n1"), lambda c: c.failed(job, 1, "n1", "node_lost")
    )
    row = wait_for(lambda: (s := status(stack, job)) and s["attempt"] == 2 and s, "the reroute")
    assert (row["pool"], row["queue"], row["status"]) == (
        "steady",
        "jobtrail.work.steady.sync",
        "queued",
    )
    moved = wait_for(
        lambda: get_messages(rabbit, "jobtrail.work.steady.sync"), "the rerouted job message"
    )
    assert json.loads(moved[0].body)["job_id"] == job
    rerouted = [e for e in history(stack, job) if e["type"] == "rerouted"]
    assert (rerouted[0]["from_pool"], rerouted[0]["pool"]) == ("flaky", "steady")


def test_the_same_event_sent_twice_is_recorded_once(stack: dict[str, str]) -> None:
    rabbit = stack["JOBTRAIL_RABBIT_URL"]
    job = new_job_id()
    submit(stack, job)

    async def twice(client):  # type: ignore[no-untyped-def]
        event = await client.reserved(job, 1, "n1")
        await client.publish(event)
        await client.publish(event)

    publish(rabbit, twice, lambda c: c.completed(job, 1, "n1"))
    wait_status(stack, job, "completed")
    assert [e["type"] for e in history(stack, job)] == ["submitted", "reserved", "completed"]


def test_bad_input_is_quarantined_with_its_reason_and_tracking_goes_on(
    stack: dict[str, str],
) -> None:
    rabbit = stack["JOBTRAIL_RABBIT_URL"]
    job = new_job_id()
    unknown_type = json.dumps(
        {
            "type": "exploded",
            "event_id": "7e0c1a9e-0000-4000-8000-000000000001",
            "job_id": job,
            "occurred_at": "2026-11-27T10:00:00Z",
            "attempt": 1,
            "source": "n1",
        }
    )
    missing_field = json.dumps(
        {
            "type": "failed",
            "event_id": "7e0c1a9e-0000-4000-8000-000000000002",
            "job_id": job,
            "occurred_at": "2026-11-27T10:00:00Z",
            "attempt": 1,
            "source": "n1",
            "node_id": "n1",
            "error_code": "x",
        }
    )
    publish(
        rabbit,
        lambda c: c.publish_raw(b'{"type": "submitted", ', "job.submitted"),
        lambda c: c.publish_raw(unknown_type.encode(), "job.exploded"),
        lambda c: c.publish_raw(missing_field.encode(), "job.failed"),
    )
    parked = wait_for(
        lambda: get_messages(rabbit, "jobtrail.quarantine", wait=1.0), "quarantined messages"
    )
    reasons = sorted(m.headers["x-jobtrail-reason"] for m in parked)
    assert len(reasons) == 3, reasons
    assert sum(r.startswith("invalid_json:") for r in reasons) == 1
    assert any(r.startswith("invalid_event:") and "exploded" in r for r in reasons), reasons
    assert any(
        r.startswith("invalid_event:") and "retryable: Field required" in r for r in reasons
    ), reasons
    submit(stack, job)  # still tracking
    assert status(stack, job)["status"] == "queued"  # type: ignore[index]


def test_events_for_an_unknown_job_or_a_stale_attempt_are_recorded_and_flagged(
    stack: dict[str, str],
) -> None:
    rabbit = stack["JOBTRAIL_RABBIT_URL"]
    ghost = new_job_id("ghost")
    publish(rabbit, lambda c: c.completed(ghost, 1, "n9"))
    row = wait_for(lambda: status(stack, ghost), "the ghost job's projection")
    assert (row["status"], row["anomalies"]) == (None, 1)
    job = new_job_id()
    submit(stack, job)
    publish(rabbit, lambda c: c.reserved(job, 1, "n1"), lambda c: c.failed(job, 7, "n1", "oops"))
    wait_for(lambda: (status(stack, job) or {}).get("anomalies") == 1, "the stale-attempt anomaly")
    assert status(stack, job)["status"] == "reserved"  # type: ignore[index]
    assert [e["type"] for e in history(stack, job)][-1] == "failed"


def test_status_and_history_of_an_unknown_job_exit_2(stack: dict[str, str]) -> None:
    for command in ("status", "history"):
        code, out = cli(stack, command, "never-seen")
        assert code == 2
        assert out.strip() == "jobtrail: no events for job 'never-seen'"


def test_broker_dead_lettering_is_recorded_from_source_broker(stack: dict[str, str]) -> None:
    rabbit = stack["JOBTRAIL_RABBIT_URL"]
    job = new_job_id()
    queue = f"jobtrail.work.bdl-{job}.sync"
    submit(stack, job, pool=f"bdl-{job}")
    # The node rejects the job message without requeue: RabbitMQ dead-letters it (x-death).
    msgs = []

    async def reject() -> None:
        import aio_pika

        conn = await aio_pika.connect_robust(rabbit)
        channel = await conn.channel()
        q = await channel.declare_queue(queue, passive=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            msg = await q.get(fail=False)
            if msg is not None:
                msgs.append(msg)
                await msg.reject(requeue=False)
                break
        await conn.close()

    import asyncio

    asyncio.run(reject())
    assert msgs, "the job message was not in its work queue"
    row = wait_status(stack, job, "dead_lettered")
    assert row["terminal_reason"] == "broker"
    last = history(stack, job)[-1]
    assert (last["type"], last["source"]) == ("dead_lettered", "broker")
    assert "x-death reason=rejected" in last["detail"]


def test_replaying_the_real_log_reproduces_every_decision(stack: dict[str, str]) -> None:
    """Runs last in this module: every decision recorded above is re-derived byte for byte."""
    import asyncio

    from app.adapters.log_factory import open_event_log
    from app.domain.policy import Policy
    from app.services.replay import replay_decisions
    from tests.e2e.harness import TEST_POLICY

    async def go() -> tuple[int, list[object]]:
        log = open_event_log(stack["JOBTRAIL_LOG_URL"])
        try:
            jobs: dict[str, list] = {}
            async for recorded in log.scan():
                jobs.setdefault(recorded.job_id, []).append(recorded)
        finally:
            await log.close()
        policy = Policy.from_toml(TEST_POLICY)
        decided = sum(1 for evs in jobs.values() for e in evs if e.event.source == "jobtrail")
        return decided, [d for evs in jobs.values() for d in replay_decisions(evs, policy)]

    decided, divergences = asyncio.run(go())
    assert decided >= 8  # expiries, retries, a reroute and dead letters were decided above
    assert divergences == []


def test_an_event_without_the_job_id_header_is_still_recorded(stack: dict[str, str]) -> None:
    rabbit = stack["JOBTRAIL_RABBIT_URL"]
    job = new_job_id()
    submit(stack, job)

    async def unkeyed(client):  # type: ignore[no-untyped-def]
        import uuid
        from datetime import UTC, datetime

        from app.domain.events import Reserved

        event = Reserved(
            event_id=uuid.uuid4(),
            job_id=job,
            occurred_at=datetime.now(UTC),
            attempt=1,
            source="legacy-node",
            node_id="n1",
        )
        await client.publish_raw(event.model_dump_json().encode(), "job.reserved", job_id=None)

    publish(rabbit, unkeyed)
    row = wait_status(stack, job, "reserved")
    assert row["node_id"] == "n1"

"""Smoke test of a running Jobtrail (the Docker Compose stack in CI): one job, start to end.

Submits a job through RabbitMQ as the Cloud would, reserves and completes it as a node would,
and waits until the HTTP API reports it completed. Exit 0 on success, 1 with one line saying
what did not happen. Needs the ``jobtrail`` package installed (its client) and the stack's
ports published on this machine:

    python scripts/smoke.py --rabbit amqp://guest:guest@127.0.0.1:5672/ --api http://127.0.0.1:8080
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid

import httpx

from app.client import JobtrailClient


async def _drive(rabbit_url: str, job_id: str) -> None:
    async with JobtrailClient(rabbit_url, source="smoke") as client:
        await client.submit(
            job_id,
            payload={"prompt": "smoke"},
            job_type="sync",
            model="smoke-model",
            priority="test",
            tenant="smoke",
            pool="shared",
        )
        await client.reserved(job_id, 1, "smoke-node")
        await client.completed(job_id, 1, "smoke-node", duration_ms=1)


def _wait_completed(api: str, job_id: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    last = "no answer"
    with httpx.Client(base_url=api, timeout=5) as http:
        while time.monotonic() < deadline:
            try:
                answer = http.get(f"/jobs/{job_id}")
                last = f"{answer.status_code} {answer.text[:200]}"
                if answer.status_code == 200 and answer.json()["status"] == "completed":
                    return "completed"
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(0.5)
    return last


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rabbit", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--api", default="http://127.0.0.1:8080")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    job_id = f"smoke-{uuid.uuid4().hex[:12]}"
    asyncio.run(_drive(args.rabbit, job_id))
    outcome = _wait_completed(args.api, job_id, args.timeout)
    if outcome != "completed":
        print(f"smoke: job {job_id} not completed within {args.timeout:.0f}s: {outcome}")
        return 1
    print(f"smoke: job {job_id} submitted, recorded and completed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

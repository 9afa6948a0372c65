"""The HTTP API end to end: the real Tracker service writes a scenario into real stores (SQLite
log and projections; MongoDB-speaking log + PostgreSQL projections), then httpx asks the app.

Also here: tokens, hostile input on every parameter, metrics, ``jobtrail api`` and
``jobtrail jobs``, and the examples of docs/cloud-api.md run as written.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import re
import shlex
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import httpx
import pytest
from fastapi import Depends, FastAPI
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from app.adapters.log_factory import open_event_log
from app.adapters.memory_log import InMemoryEventLog
from app.adapters.memory_store import InMemoryProjectionStore
from app.adapters.sql_queries import SqlJobQueries
from app.adapters.sql_schema import migrate
from app.adapters.sql_store import SqlProjectionStore
from app.bootstrap import Readers, hosting, load_policy
from app.bootstrap.metrics import OTHER, Metrics
from app.domain.events import Completed, Failed, JobEvent, Reserved, Submitted
from app.entrypoints import api_cli, api_server, shapes
from app.entrypoints.api import create_api
from app.entrypoints.api_auth import Role, Tokens, TokenSettings, load_tokens, require_operator
from app.entrypoints.cli import app as cli_app
from app.ports import JobRow
from app.services.health import Health
from app.services.tracking import Tracker
from app.settings import Settings
from tests import servers
from tests.e2e.harness import api_process

assert api_cli  # importing it registers `jobtrail api` and `jobtrail jobs` on the CLI app

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "cloud-api.md"
T0 = datetime(2026, 11, 27, 14, 0, tzinfo=UTC)
NOW = T0 + timedelta(seconds=90)
NAMESPACE = uuid.UUID("6f1d3c52-4b7e-4a53-9b4f-1f0c8a9d2e10")
READ, AUDIT, OPERATE = "read-token-0123456789", "audit-token-0123456789", "op-token-0123456789"
BASE = "http://127.0.0.1:8080"
FILTERS = [
    "status",
    "queue",
    "pool",
    "tenant",
    "model",
    "priority",
    "job_type",
    "error_code",
    "node_id",
]
HOSTILE = [
    "' OR 1=1 --",
    "1; DROP TABLE jobs; --",
    '{"$gt": ""}',
    '{"$ne": null}',
    "$where",
    "a.b",
    "job-done' --",
    "%",
    "*",
    "\x00",
    "null",
    "[]",
    "../../etc/passwd",
    "<script>alert(1)</script>",
    "🙂",
    "x" * 10_000,
    "' OR 1=1 --",  # matches job-odd's model exactly: that row, and only it
]


class FakeClock:
    def __init__(self) -> None:
        self.at = T0

    def now(self) -> datetime:
        return self.at


def envelope(job_id: str, n: int, source: str = "cloud") -> dict[str, Any]:
    return {
        "event_id": uuid.uuid5(NAMESPACE, f"{job_id}/{n}"),
        "job_id": job_id,
        "occurred_at": T0,
        "attempt": 1,
        "source": source,
    }


def submit(job_id: str, pool: str, tenant: str, model: str, priority: str, kind: str) -> JobEvent:
    return Submitted(
        **envelope(job_id, 0),
        job_type=kind,
        model=model,
        priority=priority,
        tenant=tenant,
        pool=pool,
        queue=f"jobtrail.work.{pool}.{kind}",
        payload={"prompt": "hello"},
    )


def reserve(job_id: str, node: str) -> JobEvent:
    return Reserved(**envelope(job_id, 1, node), node_id=node)


def fail_attempt(job_id: str, node: str, code: str, message: str, retryable: bool) -> JobEvent:
    return Failed(
        **envelope(job_id, 2, node),
        node_id=node,
        error_code=code,
        error_message=message,
        retryable=retryable,
    )


async def seed_scenario(tracker: Tracker, clock: FakeClock) -> None:
    """job-done completes; job-retry fails (oom) and is retried; job-dead fails for good."""
    steps: list[tuple[int, list[JobEvent]]] = [
        (
            0,
            [
                submit("job-done", "gpu-a", "acme", "llama-3-8b", "urgent", "sync"),
                submit("job-retry", "gpu-a", "acme", "llama-3-8b", "bulk", "batch"),
                submit("job-dead", "gpu-b", "globex", "mistral-7b", "bulk", "polling"),
                submit("job-waiting", "gpu-b", "globex", "mistral-7b", "test", "stream"),
            ],
        ),
        (
            10,
            [
                reserve("job-done", "node-1"),
                reserve("job-retry", "node-2"),
                reserve("job-dead", "node-3"),
            ],
        ),
        (
            20,
            [
                Completed(**envelope("job-done", 2, "node-1"), node_id="node-1", duration_ms=9100),
                fail_attempt("job-retry", "node-2", "oom", "CUDA out of memory", True),
                fail_attempt("job-dead", "node-3", "invalid_input", "prompt is empty", False),
            ],
        ),
        (
            30,
            [
                submit(f"batch-{i:02d}", "cpu", "initech", "whisper", "test", "batch")
                for i in range(12)
            ],
        ),
        (40, [submit("job-odd", "cpu", '{"$gt": ""}', "' OR 1=1 --", "test", "sync")]),
    ]
    for seconds, events in steps:
        clock.at = T0 + timedelta(seconds=seconds)
        await tracker.record(events)
    clock.at = T0 + timedelta(seconds=60)
    assert await tracker.fire_due_timers() == 1  # job-retry's cooldown is over: retried
    clock.at = NOW


@dataclass
class Backend:
    name: str
    settings: Settings
    readers: Readers
    queries: SqlJobQueries
    clock: FakeClock
    env: dict[str, str]

    def app(self, **options: Any) -> FastAPI:
        options.setdefault("tokens", Tokens())
        options.setdefault("queries", self.queries)
        return create_api(self.settings, self.readers, clock=self.clock, **options)

    async def rows(self) -> list[JobRow]:
        return [row async for row in self.readers.store.all_jobs()]


@pytest.fixture(scope="module", params=["sqlite", "mongo+postgres"])
def store_urls(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str, str]]:
    """(backend name, log URL, SQL URL): SQLite for both, or MongoDB log + PostgreSQL."""
    if request.param == "sqlite":
        folder = tmp_path_factory.mktemp("api")
        log, sql = (
            f"sqlite+aiosqlite:///{folder / 'log.db'}",
            f"sqlite+aiosqlite:///{folder / 'jt.db'}",
        )
        yield request.param, log, sql
        return
    mongo_base = request.getfixturevalue("mongo_base_url")
    with servers.pg_database() as pg:
        yield (
            request.param,
            servers.mongo_database_url(mongo_base, f"jt_{uuid.uuid4().hex[:12]}"),
            pg,
        )


@pytest.fixture(scope="module")
async def backend(store_urls: tuple[str, str, str]) -> AsyncIterator[Backend]:
    name, log_url, sql_url = store_urls
    settings = Settings(log_url=log_url, sql_url=sql_url, policy_file=None, http_port=0)
    await migrate(sql_url)
    if not settings.uses_mongo:
        await migrate(log_url)
    log, store = open_event_log(log_url), SqlProjectionStore(sql_url)
    readers = Readers(log, store, load_policy(settings))
    await log.ensure_schema()
    clock = FakeClock()
    await seed_scenario(Tracker(log, store, readers.policy, clock), clock)
    queries = SqlJobQueries(sql_url)
    env = {"JOBTRAIL_LOG_URL": log_url, "JOBTRAIL_SQL_URL": sql_url}
    yield Backend(name, settings, readers, queries, clock, env)
    await queries.close()
    await readers.close()


def client_of(app: FastAPI, token: str | None = None) -> httpx.AsyncClient:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE, headers=headers)


@pytest.fixture
async def client(backend: Backend) -> AsyncIterator[httpx.AsyncClient]:
    async with client_of(backend.app()) as c:
        yield c


def expected_ids(rows: list[JobRow], **filters: str) -> list[str]:
    """What a list must answer, computed here from every projected row."""
    field = {"error_code": "last_error_code"}
    chosen = [r for r in rows if all(getattr(r, field.get(k, k)) == v for k, v in filters.items())]
    chosen.sort(key=lambda r: (r.updated_at, r.job_id), reverse=True)
    return [r.job_id for r in chosen]


# A job, its history, and its state as of an instant.


async def test_a_job_is_its_projection_row(backend: Backend, client: httpx.AsyncClient) -> None:
    response = await client.get("/jobs/job-retry")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    stored = await backend.readers.store.get_job("job-retry")
    assert stored is not None
    assert body == shapes.row_json(stored)
    assert (body["status"], body["attempt"], body["last_error_code"]) == ("queued", 2, "oom")
    assert datetime.fromisoformat(body["updated_at"]) == T0 + timedelta(seconds=60)


@pytest.mark.parametrize(
    ("seconds", "status", "attempt", "node"),
    [
        (0, "queued", 1, None),
        (5, "queued", 1, None),
        (10, "reserved", 1, "node-2"),
        (25, "cooling_down", 1, "node-2"),
        (60, "queued", 2, None),
    ],
)
async def test_as_of_folds_the_events_recorded_up_to_that_instant(
    client: httpx.AsyncClient, seconds: int, status: str, attempt: int, node: str | None
) -> None:
    at = (T0 + timedelta(seconds=seconds)).astimezone(UTC).isoformat()
    response = await client.get("/jobs/job-retry", params={"as_of": at})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["status"], body["attempt"], body["node_id"]) == (status, attempt, node)


async def test_as_of_before_the_first_event_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/jobs/job-retry", params={"as_of": "2026-11-27T13:59:59Z"})
    assert response.status_code == 404
    assert response.json()["error"].startswith(
        "job 'job-retry' not found as of 2026-11-27T13:59:59"
    )


async def test_as_of_now_equals_the_projection(client: httpx.AsyncClient) -> None:
    for job in ("job-done", "job-retry", "job-dead", "batch-03", "job-odd"):
        live = (await client.get(f"/jobs/{job}")).json()
        folded = (await client.get(f"/jobs/{job}", params={"as_of": NOW.isoformat()})).json()
        assert folded == live


async def test_history_is_what_jobtrail_history_json_prints(
    backend: Backend, client: httpx.AsyncClient
) -> None:
    response = await client.get("/jobs/job-retry/history")
    assert response.status_code == 200
    entries = response.json()
    assert [e["type"] for e in entries] == ["submitted", "reserved", "failed", "retried"]
    assert [e["seq"] for e in entries] == [1, 2, 3, 4]
    assert entries[3]["source"] == "jobtrail" and entries[3]["attempt"] == 2
    assert entries == await asyncio.to_thread(
        cli_json, backend.env, "history", "job-retry", "--json"
    )


def cli_json(env: dict[str, str], *args: str) -> Any:
    result = CliRunner().invoke(cli_app, list(args), env=env)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize("path", ["/jobs/nope", "/jobs/nope/history"])
async def test_an_unknown_job_is_404(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 404
    assert response.json() == {
        "error": response.json()["error"],
        "detail": {"job_id": "nope"},
    }
    assert "'nope'" in response.json()["error"]


# Lists, filters and pages.


async def test_the_list_is_newest_change_first(backend: Backend, client: httpx.AsyncClient) -> None:
    response = await client.get("/jobs", params={"limit": 500})
    assert response.status_code == 200
    body = response.json()
    assert body["next_cursor"] is None
    assert [item["job_id"] for item in body["items"]] == expected_ids(await backend.rows())
    assert body["items"][0]["job_id"] == "job-retry"  # changed last (retried at T0+60s)


@pytest.mark.parametrize(
    "filters",
    [
        {"status": "queued"},
        {"status": "dead_lettered"},
        {"status": "completed"},
        {"job_type": "sync"},
        {"queue": "jobtrail.work.cpu.batch"},
        {"pool": "gpu-b"},
        {"tenant": "acme"},
        {"model": "mistral-7b"},
        {"priority": "urgent"},
        {"job_type": "polling"},
        {"error_code": "oom"},
        {"node_id": "node-1"},
        {"tenant": '{"$gt": ""}'},
        {"model": "' OR 1=1 --"},
        {"status": "queued", "pool": "gpu-a", "priority": "bulk"},
        {"tenant": "globex", "status": "queued", "job_type": "stream"},
    ],
)
async def test_each_filter_returns_exactly_the_matching_jobs(
    backend: Backend, client: httpx.AsyncClient, filters: dict[str, str]
) -> None:
    response = await client.get("/jobs", params=filters)
    assert response.status_code == 200, response.text
    ids = [item["job_id"] for item in response.json()["items"]]
    assert ids == expected_ids(await backend.rows(), **filters)
    assert ids  # every case matches something


async def test_updated_range_filters(client: httpx.AsyncClient) -> None:
    params = {
        "updated_since": "2026-11-27T15:00:20+01:00",  # T0+20s, given in another offset
        "updated_until": "2026-11-27T14:00:40Z",
    }
    response = await client.get("/jobs", params=params | {"limit": 100})
    ids = [item["job_id"] for item in response.json()["items"]]
    assert ids == [f"batch-{i:02d}" for i in reversed(range(12))] + ["job-done", "job-dead"]


@pytest.mark.parametrize("limit", [1, 2, 5, 16])
async def test_pages_walk_every_job_once(
    backend: Backend, client: httpx.AsyncClient, limit: int
) -> None:
    seen: list[str] = []
    cursor = None
    for _ in range(100):
        params: dict[str, Any] = {"limit": limit} | ({"cursor": cursor} if cursor else {})
        body = (await client.get("/jobs", params=params)).json()
        assert len(body["items"]) <= limit
        seen += [item["job_id"] for item in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == expected_ids(await backend.rows())


async def test_a_cursor_keeps_its_place_when_filters_change(client: httpx.AsyncClient) -> None:
    first = (await client.get("/jobs", params={"status": "queued", "limit": 3})).json()
    rest = await client.get("/jobs", params={"status": "queued", "cursor": first["next_cursor"]})
    ids = [item["job_id"] for item in first["items"] + rest.json()["items"]]
    assert len(ids) == len(set(ids)) == 15


# Stats, health, metrics, OpenAPI.


async def test_stats_count_jobs_and_attempts_in_the_window(client: httpx.AsyncClient) -> None:
    response = await client.get("/stats", params={"minutes": 5})
    assert response.status_code == 200
    body = response.json()
    jobs, attempts = body["jobs"], body["attempts"]
    assert jobs["total"] == 17
    assert jobs["by_status"] == {"queued": 15, "completed": 1, "dead_lettered": 1}
    cpu_batch = next(q for q in jobs["by_queue"] if q["queue"] == "jobtrail.work.cpu.batch")
    assert cpu_batch == {
        "queue": "jobtrail.work.cpu.batch",
        "total": 12,
        "by_status": {"queued": 12},
    }
    assert (attempts["since"], attempts["until"]) == (
        "2026-11-27T13:57:00+00:00",
        "2026-11-27T14:02:00+00:00",
    )
    assert attempts["ended"] == {"completed": 1, "failed": 2, "expired": 0, "dead_lettered": 0}
    assert attempts["failure_rate"] == pytest.approx(2 / 3)
    assert attempts["completed_per_minute"] == pytest.approx(1 / 5)
    assert [m["minute"] for m in attempts["per_minute"]][3] == "2026-11-27T14:00:00+00:00"
    assert attempts["per_minute"][3] == {
        "minute": "2026-11-27T14:00:00+00:00",
        "completed": 1,
        "failed": 2,
        "expired": 0,
        "dead_lettered": 0,
    }
    assert body["health"] == {"status": "ok", "reason": None}


async def test_healthz_is_ok_then_degraded_from_the_tracker_or_the_sql_ping(
    backend: Backend, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    health = Health()
    health.degrade("batcher", "store unavailable: the log does not answer")
    async with client_of(backend.app(health=health)) as degraded:
        response = await degraded.get("/healthz")
        assert response.status_code == 503
        assert response.json() == {"status": "degraded", "reason": health.degraded_reason}
        stats = (await degraded.get("/stats")).json()
        assert stats["health"]["status"] == "degraded"
    broken = SqlJobQueries(f"sqlite+aiosqlite:///{tmp_path}/missing/x.db")
    try:
        async with client_of(backend.app(queries=broken)) as unreachable:
            response = await unreachable.get("/healthz")
            assert response.status_code == 503
            assert response.json()["reason"] == "the projection store does not answer"
    finally:
        await broken.close()


async def test_a_store_outage_is_503_json(backend: Backend, tmp_path: Path) -> None:
    missing = f"sqlite+aiosqlite:///{tmp_path}/missing/x.db"
    queries, store = SqlJobQueries(missing), SqlProjectionStore(missing)
    readers = replace(backend.readers, store=store)
    app = create_api(backend.settings, readers, queries=queries, tokens=Tokens())
    try:
        async with client_of(app) as c:
            for path in ("/jobs", "/jobs/job-done", "/stats"):
                response = await c.get(path)
                assert response.status_code == 503, path
                assert response.headers["retry-after"] == "5"
                assert response.json() == {
                    "error": "storage is unavailable; try again later",
                    "detail": None,
                }
    finally:
        await queries.close()
        await store.close()


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_metrics_label_requests_by_route_template(backend: Backend) -> None:
    metrics = Metrics()
    async with client_of(backend.app(metrics=metrics)) as c:
        for job in ("job-done", "job-dead", "no-such-job"):
            await c.get(f"/jobs/{job}")
        await c.get("/not-a-route")
        response = await c.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = metric_samples(response.text)
    labels = (("method", "GET"), ("route", "/jobs/{job_id}"), ("status", "200"))
    assert samples["jobtrail_api_request_duration_seconds_count", labels] == 2
    missing = (("method", "GET"), ("route", "/jobs/{job_id}"), ("status", "404"))
    assert samples["jobtrail_api_request_duration_seconds_count", missing] == 1
    unmatched = (("method", "GET"), ("route", "unmatched"), ("status", "404"))
    assert samples["jobtrail_api_request_duration_seconds_count", unmatched] == 1
    assert "job-done" not in response.text and "not-a-route" not in response.text


async def test_the_tracker_feeds_metrics_through_its_listeners() -> None:
    metrics, clock = Metrics(), FakeClock()
    log, store = InMemoryEventLog(), InMemoryProjectionStore()
    policy = load_policy(Settings(policy_file=None))
    tracker = Tracker(log, store, policy, clock, on_decision=metrics.on_decision)
    await seed_scenario(tracker, clock)
    metrics.recorded([submit("j", "p", "t", "m", "test", "sync")])
    metrics.quarantined("invalid_json")
    metrics.projection_lag(1.5)
    metrics.timer_lag(-3)
    samples = metric_samples(metrics.render().decode())
    assert samples["jobtrail_decisions_total", (("kind", "retried"),)] == 1
    assert samples["jobtrail_decisions_total", (("kind", "dead_lettered"),)] == 1
    assert samples["jobtrail_dead_letters_total", (("reason", "non_retryable"),)] == 1
    assert samples["jobtrail_dead_letters_total", (("reason", "poison"),)] == 0
    assert samples["jobtrail_events_recorded_total", (("type", "retried"),)] == 1
    assert samples["jobtrail_events_recorded_total", (("type", "submitted"),)] == 1
    assert samples["jobtrail_quarantined_inputs_total", (("reason", "invalid_json"),)] == 1
    assert samples["jobtrail_projection_lag_seconds", ()] == 1.5
    assert samples["jobtrail_timer_lag_seconds", ()] == 0


def test_metric_labels_stay_bounded() -> None:
    metrics = Metrics()
    metrics.quarantined("Invalid JSON at line 3: {'$gt'}")
    metrics.record_events(["no_such_type", "job-123"])
    for i in range(200):
        metrics.quarantined(f"reason_{i}")
    metrics.observe_request("FOOBAR", "/jobs", 200, 0.01)
    samples = metric_samples(metrics.render().decode())
    reasons = {
        dict(labels)["reason"]
        for name, labels in samples
        if name == "jobtrail_quarantined_inputs_total"
    }
    assert OTHER in reasons and len(reasons) <= 64 + 1
    assert samples["jobtrail_quarantined_inputs_total", (("reason", OTHER),)] > 1
    types = {
        dict(labels)["type"] for name, labels in samples if name == "jobtrail_events_recorded_total"
    }
    assert "job-123" not in types
    assert (
        "jobtrail_api_request_duration_seconds_count",
        (("method", OTHER), ("route", "/jobs"), ("status", "200")),
    ) in samples


async def test_openapi_and_docs_are_served(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    assert {
        "/jobs",
        "/jobs/{job_id}",
        "/jobs/{job_id}/history",
        "/stats",
        "/healthz",
        "/metrics",
    } <= set(spec["paths"])
    params = {p["name"] for p in spec["paths"]["/jobs"]["get"]["parameters"]}
    assert params == {*FILTERS, "updated_since", "updated_until", "limit", "cursor"}
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
    docs = await client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


# Bad input: always a clear 4xx, never a 500, never an extra row.


@pytest.mark.parametrize("name", [*FILTERS, "updated_since", "updated_until", "limit", "cursor"])
async def test_hostile_values_in_every_list_filter(
    backend: Backend, client: httpx.AsyncClient, name: str
) -> None:
    rows = await backend.rows()
    for value in HOSTILE:
        response = await client.get("/jobs", params={name: value})
        assert response.status_code in (200, 422), (name, value, response.text[:200])
        body = response.json()
        if response.status_code == 422:
            assert body["error"] and "detail" in body
            continue
        ids = [item["job_id"] for item in body["items"]]
        assert ids == expected_ids(rows, **{name: value}), (name, value)


@pytest.mark.parametrize("suffix", ["", "/history", "?as_of=2026-11-27T14:00:30Z"])
async def test_hostile_job_ids(client: httpx.AsyncClient, suffix: str) -> None:
    for value in [*HOSTILE, "job-done/../job-dead", "job-done%00", " ", "job done"]:
        response = await client.get(f"/jobs/{quote(value, safe='')}{suffix}")
        assert response.status_code in (404, 422), (
            value,
            response.status_code,
            response.text[:200],
        )
        assert response.json()["error"]


@pytest.mark.parametrize(("path", "name"), [("/jobs/job-done", "as_of"), ("/stats", "minutes")])
async def test_hostile_values_in_other_parameters(
    client: httpx.AsyncClient, path: str, name: str
) -> None:
    for value in [*HOSTILE, "0", "-1", "1e9", "2026-13-01T00:00:00Z", "9999-12-31T23:59:59-05:00"]:
        response = await client.get(path, params={name: value})
        assert response.status_code == 422, (name, value, response.text[:200])
        assert response.json()["error"].startswith(f"invalid query.{name}")


@pytest.mark.parametrize(
    "query",
    [
        "owner=me",
        "status[$ne]=x",
        "tenant.$where=1",
        "%24where=1",
        "limit=1&bogus=" + "y" * 10_000,
    ],
)
async def test_unknown_query_parameters_are_refused(client: httpx.AsyncClient, query: str) -> None:
    for path in (
        "/jobs",
        "/jobs/job-done",
        "/jobs/job-done/history",
        "/stats",
        "/healthz",
        "/metrics",
    ):
        response = await client.get(f"{path}?{query}")
        assert response.status_code == 422, (path, query)
        assert response.json()["error"].startswith("unknown query parameter")
        assert len(response.text) < 2000  # a huge name is not echoed back


async def test_oversize_bodies_are_413_and_other_errors_are_json(client: httpx.AsyncClient) -> None:
    big = b"{" + b" " * (64 * 1024) + b"}"
    for method, path in [("GET", "/jobs"), ("POST", "/jobs"), ("PUT", "/jobs/job-done")]:
        response = await client.request(method, path, content=big)
        assert response.status_code == 413
        assert response.json() == {
            "error": "request body too large",
            "detail": {"limit_bytes": 65536},
        }

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(80):
            yield b"x" * 1024

    streamed = await client.post("/jobs", content=chunks())
    assert streamed.status_code in (405, 413)  # not read at all by a GET-only route
    assert (await client.post("/jobs", content=b"{}")).json() == {
        "error": "method not allowed on this endpoint",
        "detail": None,
    }
    assert (await client.get("/nowhere")).json() == {"error": "no such endpoint", "detail": None}


# Tokens.


def operator_app(backend: Backend, tokens: Tokens) -> FastAPI:
    app = backend.app(tokens=tokens)

    @app.post("/operator-only")
    async def act(role: Annotated[Role, Depends(require_operator)]) -> dict[str, str]:
        return {"role": role}

    return app


async def test_reads_need_a_token_when_a_read_token_is_set(backend: Backend) -> None:
    app = operator_app(backend, Tokens.of(read=READ, auditor=AUDIT, operator=OPERATE))
    for token, expected in [
        (None, 401),
        ("wrong-token-0123456789", 401),
        (READ, 200),
        (AUDIT, 200),
        (OPERATE, 200),
    ]:
        async with client_of(app, token) as c:
            for path in ("/jobs", "/jobs/job-done", "/jobs/job-done/history", "/stats", "/metrics"):
                response = await c.get(path)
                assert response.status_code == expected, (token, path)
            assert (await c.get("/healthz")).status_code == 200  # probes stay open
    async with client_of(app) as anonymous:
        response = await anonymous.get("/jobs")
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json() == {"error": "a bearer token is required to read", "detail": None}


async def test_operator_actions_need_the_operator_token(backend: Backend) -> None:
    app = operator_app(backend, Tokens.of(auditor=AUDIT, operator=OPERATE))
    async with client_of(app) as anonymous:
        assert (await anonymous.get("/jobs")).status_code == 200  # reads are open
        assert (await anonymous.post("/operator-only")).status_code == 401
    for token, expected in [("wrong-token-0123456789", 401), (AUDIT, 403), (OPERATE, 200)]:
        async with client_of(app, token) as c:
            response = await c.post("/operator-only")
            assert response.status_code == expected, token
    async with client_of(app, AUDIT) as auditor:
        response = await auditor.post("/operator-only")
        assert (
            response.json()["error"]
            == "the auditor token cannot act; an operator token is required"
        )
    async with client_of(app, OPERATE) as operator:
        assert (await operator.post("/operator-only")).json() == {"role": "operator"}


async def test_operator_actions_are_disabled_without_an_operator_token(backend: Backend) -> None:
    app = operator_app(backend, Tokens.of(read=READ))
    async with client_of(app, READ) as reader:
        response = await reader.post("/operator-only")
    assert response.status_code == 403
    assert "no operator token is configured" in response.json()["error"]


async def test_tokens_are_never_logged_or_shown(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    tokens = Tokens.of(read=READ, auditor=AUDIT, operator=OPERATE)
    app = operator_app(backend, tokens)
    wrong = "wrong-token-9876543210"
    for token in (READ, AUDIT, OPERATE, wrong):
        async with client_of(app, token) as c:
            await c.get("/jobs")
            await c.post("/operator-only")
    settings = TokenSettings(read_token=READ, operator_token=OPERATE)
    shown = caplog.text + repr(tokens) + repr(settings) + str(settings)
    for secret in (READ, AUDIT, OPERATE, wrong):
        assert secret not in shown


def test_token_files_are_read_once_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "read-token"
    path.write_text(READ + "\n")
    tokens = load_tokens(TokenSettings(read_token_file=path))
    path.write_text("changed-token-0123456789")
    assert tokens.role_of(READ) is Role.READER
    assert tokens.role_of("changed-token-0123456789") is None
    problems = {
        "not both": TokenSettings(read_token=READ, read_token_file=path),
        "cannot read": TokenSettings(operator_token_file=tmp_path / "missing"),
        "printable ASCII": TokenSettings(read_token="short"),
        "must all differ": TokenSettings(read_token=READ, auditor_token=READ),
    }
    for message, settings in problems.items():
        with pytest.raises(ValueError, match=message):
            load_tokens(settings)


# The commands: `jobtrail jobs` and `jobtrail api`.


def test_jobs_command_lists_what_the_api_lists(backend: Backend) -> None:
    page = cli_json(backend.env, "jobs", "--status", "queued", "--pool", "gpu-a", "--json")
    assert [item["job_id"] for item in page["items"]] == ["job-retry"]
    assert page["next_cursor"] is None
    first = cli_json(backend.env, "jobs", "--tenant", "initech", "--limit", "10", "--json")
    rest = cli_json(
        backend.env, "jobs", "--tenant", "initech", "--cursor", first["next_cursor"], "--json"
    )
    ids = [item["job_id"] for item in first["items"] + rest["items"]]
    assert ids == [f"batch-{i:02d}" for i in reversed(range(12))]
    assert first["items"][0]["updated_at"] == "2026-11-27T14:00:30+00:00"


def test_jobs_command_prints_a_table(backend: Backend) -> None:
    result = CliRunner().invoke(cli_app, ["jobs", "--tenant", "acme"], env=backend.env)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "UPDATED_AT",
        "JOB_ID",
        "STATUS",
        "ATTEMPT",
        "QUEUE",
        "POOL",
        "TENANT",
        "MODEL",
    ]
    assert [line.split()[1] for line in lines[1:]] == ["job-retry", "job-done"]
    empty = CliRunner().invoke(cli_app, ["jobs", "--tenant", "nobody"], env=backend.env)
    assert (empty.exit_code, empty.stdout, empty.stderr) == (0, "", "no matching jobs\n")


def test_jobs_command_treats_hostile_values_as_data(backend: Backend) -> None:
    rows = asyncio.run(_rows_of(backend.env["JOBTRAIL_SQL_URL"]))
    for name in ("tenant", "model", "error_code", "status"):
        for value in HOSTILE:
            option = "--" + name.replace("_", "-")
            result = CliRunner().invoke(cli_app, ["jobs", option, value, "--json"], env=backend.env)
            assert result.exit_code in (0, 2), (name, value, result.output[-500:])
            assert "Traceback" not in result.output
            if result.exit_code == 2:
                assert result.stderr.startswith(f"jobtrail: invalid {option}:")
                continue
            ids = [item["job_id"] for item in json.loads(result.stdout)["items"]]
            assert ids == expected_ids(rows, **{name: value}), (name, value)


async def _rows_of(sql_url: str) -> list[JobRow]:
    store = SqlProjectionStore(sql_url)
    try:
        return [row async for row in store.all_jobs()]
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--status", "lost"], "jobtrail: invalid --status: Input should be 'queued'"),
        (["--updated-since", "yesterday"], "jobtrail: invalid --updated-since:"),
        (
            ["--updated-since", "2026-11-27T14:00:00"],
            "jobtrail: invalid --updated-since: Input should have timezone info",
        ),
        (
            ["--tenant", '{"$gt": ""}', "--cursor", "bogus"],
            "jobtrail: cursor is not one this API handed out",
        ),
        (["--limit", "0"], "Invalid value for '--limit'"),
    ],
)
def test_jobs_command_refuses_bad_filters_in_one_line(
    backend: Backend, args: list[str], message: str
) -> None:
    result = CliRunner().invoke(cli_app, ["jobs", *args], env=backend.env)
    assert result.exit_code == 2
    assert message in result.stderr
    assert "Traceback" not in result.output


async def test_serve_api_runs_in_this_loop_until_stopped(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="jobtrail.api")
    stop = asyncio.Event()
    serving = asyncio.create_task(
        api_server.serve_api(
            backend.settings, backend.readers, Health(), Metrics(), stop, tokens=Tokens()
        )
    )
    url = await listening_url(caplog, serving)
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url)
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        assert (await c.get("/healthz")).json() == {"status": "ok"}
        assert (await c.get("/jobs/job-done")).json()["status"] == "completed"
    stop.set()
    await asyncio.wait_for(serving, 60)
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            await c.get("/healthz")


async def test_serve_api_on_a_socket_bound_beforehand(backend: Backend) -> None:
    sock = hosting.listen("127.0.0.1", 0)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    stop = asyncio.Event()
    serving = asyncio.create_task(
        api_server.serve_api(
            backend.settings, backend.readers, None, Metrics(), stop, tokens=Tokens(), sock=sock
        )
    )
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        assert (await c.get("/jobs", params={"status": "dead_lettered"})).json()["items"][0][
            "job_id"
        ] == "job-dead"
    stop.set()
    await asyncio.wait_for(serving, 60)
    assert sock.fileno() == -1  # closed


async def listening_url(caplog: pytest.LogCaptureFixture, serving: asyncio.Task[None]) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not serving.done():
        for record in caplog.records:
            if record.getMessage() == "jobtrail api listening":
                return str(record.__dict__["url"])
        await asyncio.sleep(0.05)
    raise AssertionError(f"the API did not start: {serving}")


async def test_serve_api_refuses_a_taken_port(backend: Backend) -> None:
    with hosting.listen("127.0.0.1", 0) as taken:
        port = taken.getsockname()[1]
        settings = backend.settings.model_copy(update={"http_port": port})
        with pytest.raises(ValueError, match=f"cannot listen on 127.0.0.1:{port}"):
            await api_server.serve_api(
                settings, backend.readers, None, Metrics(), asyncio.Event(), tokens=Tokens()
            )


def test_jobtrail_api_serves_until_sigterm(backend: Backend, tmp_path: Path) -> None:
    token_file = tmp_path / "read-token"
    token_file.write_text(READ)
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBTRAIL_")}
    env |= backend.env | {"JOBTRAIL_HTTP_PORT": "0", "JOBTRAIL_READ_TOKEN_FILE": str(token_file)}
    logfile = tmp_path / "api.log"
    with api_process(env, logfile) as url, httpx.Client(base_url=url, timeout=30) as c:
        assert c.get("/jobs").status_code == 401
        listed = c.get(
            "/jobs", params={"status": "completed"}, headers={"Authorization": f"Bearer {READ}"}
        )
        assert [item["job_id"] for item in listed.json()["items"]] == ["job-done"]
        assert c.get("/healthz").json() == {"status": "ok"}
    text = logfile.read_text()
    assert "jobtrail api stopped" in text
    assert READ not in text


def test_jobtrail_api_refuses_a_bad_token_setting(backend: Backend) -> None:
    env = backend.env | {"JOBTRAIL_READ_TOKEN": "short"}
    result = CliRunner().invoke(cli_app, ["api"], env=env)
    assert result.exit_code == 2
    assert result.stderr == (
        "jobtrail: JOBTRAIL_READ_TOKEN must be 16-4096 printable ASCII characters without spaces\n"
    )


# docs/cloud-api.md: every curl example is sent as written and must answer what the page shows.


def doc_examples() -> list[tuple[str, str]]:
    """(curl command, expected HTTP response) pairs: a ```sh curl block, then an ```http block."""
    blocks = re.findall(r"```(\w+)\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    pairs = []
    for (kind, body), (next_kind, answer) in itertools.pairwise(blocks):
        if kind == "sh" and body.startswith("curl "):
            assert next_kind == "http", f"no ```http answer after: {body}"
            pairs.append((body.strip(), answer))
    return pairs


def to_request(command: str) -> tuple[str, str, dict[str, str], bytes | None]:
    """The request a documented curl command sends (the subset of curl the page uses)."""
    words = shlex.split(command.replace("\\\n", " "))
    assert words[0] == "curl"
    method, headers, data, url, query = "GET", {}, None, None, []
    args = iter(words[1:])
    for word in args:
        if word in ("-s", "-sS", "--silent", "-G", "--get"):
            continue
        if word in ("-H", "--header"):
            name, _, value = next(args).partition(":")
            headers[name.strip()] = value.strip().replace("$JOBTRAIL_READ_TOKEN", READ)
        elif word in ("-X", "--request"):
            method = next(args)
        elif word == "--data-urlencode":
            name, _, value = next(args).partition("=")
            query.append(f"{name}={quote(value, safe='')}")
        else:
            assert url is None and word.startswith(BASE), word
            url = word
    assert url is not None
    if query:
        url += ("&" if "?" in url else "?") + "&".join(query)
    return method, url, headers, data


def check_answer(command: str, answer: str, response: httpx.Response) -> None:
    head, _, body = answer.partition("\n\n")
    status_line, *header_lines = head.strip().splitlines()
    assert response.status_code == int(status_line.split()[1]), (command, response.text[:300])
    for line in header_lines:
        name, _, value = line.partition(":")
        assert response.headers[name.strip()] == value.strip(), (command, name)
    if body.strip().startswith(("{", "[")):
        assert matches(json.loads(body), response.json()), (command, response.text)
    else:
        for line in body.strip().splitlines():
            assert line == "..." or line in response.text.splitlines(), (command, line)


def matches(expected: Any, actual: Any) -> bool:
    """Equality where "..." stands for any value and a trailing "..." for more list items."""
    if expected == "...":
        return True
    if isinstance(expected, dict):
        keys = set(expected) - {"..."}
        extra_ok = "..." in expected
        return (
            isinstance(actual, dict)
            and keys <= set(actual)
            and (extra_ok or keys == set(actual))
            and all(matches(expected[k], actual[k]) for k in keys)
        )
    if isinstance(expected, list):
        open_ended = bool(expected) and expected[-1] == "..."
        items = expected[:-1] if open_ended else expected
        if not isinstance(actual, list) or len(actual) < len(items):
            return False
        if not open_ended and len(actual) != len(items):
            return False
        return all(matches(e, a) for e, a in zip(items, actual, strict=False))
    return bool(expected == actual)


def test_the_doc_has_examples() -> None:
    assert len(doc_examples()) >= 12


async def test_the_doc_examples_answer_as_shown(backend: Backend) -> None:
    open_app = backend.app()
    guarded = backend.app(tokens=Tokens.of(read=READ))
    for command, answer in doc_examples():
        method, url, headers, data = to_request(command)
        app = guarded if "Authorization" in headers else open_app
        async with client_of(app) as c:
            response = await c.request(method, url, headers=headers, content=data)
        check_answer(command, answer, response)


def test_the_doc_cli_example_prints_what_it_shows(backend: Backend) -> None:
    text = DOC.read_text()
    command, shown = re.findall(
        r"```sh\n(jobtrail jobs [^\n]*)\n```\n+```json\n(.*?)```", text, flags=re.DOTALL
    )[0]
    result = cli_json(backend.env, *shlex.split(command)[1:])
    assert matches(json.loads(shown), result)

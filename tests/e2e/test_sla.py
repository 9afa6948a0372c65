"""Latency (SLA) and fairness end to end: the real Tracker service writes a history into real
stores (SQLite log and projections; MongoDB-speaking log + PostgreSQL projections), with the
metrics watching it; then ``GET /sla``, ``GET /fairness``, the histograms and ``jobtrail sla`` /
``jobtrail fairness`` are read, and the figures from the log and from the projection compared.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from app.adapters.log_factory import open_event_log
from app.adapters.sql_queries import SqlJobQueries
from app.adapters.sql_schema import migrate
from app.adapters.sql_store import SqlProjectionStore
from app.bootstrap import Readers
from app.bootstrap.metrics import Metrics
from app.domain.events import JobEvent
from app.domain.policy import Policy
from app.entrypoints.api import create_api
from app.entrypoints.api_auth import Tokens
from app.entrypoints.cli import app as cli_app
from app.services.analysis import Window
from app.services.sla import sla_from_log, sla_from_projection
from app.services.tracking import Tracker
from app.settings import Settings
from tests import servers
from tests.e2e.test_api import BASE, FakeClock
from tests.unit.factories import completed, failed, reserved, submitted

T0 = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)
NOW = T0 + timedelta(seconds=30)
SINCE, UNTIL = (T0 - timedelta(minutes=1)).isoformat(), (T0 + timedelta(minutes=1)).isoformat()
POLICY = """
jitter = 0
[defaults]
max_attempts = 3
[defaults.retry]
initial_interval_seconds = 5
backoff_coefficient = 1
max_interval_seconds = 5
[pools.flaky]
fallback_pools = ["steady"]
reroute_after_failures = 1
[sla.urgent]
wait_p95_seconds = 2
end_to_end_p99_seconds = 60
[fairness]
starvation_factor = 3
min_attempts = 2
"""
ACME = [f"acme-{i}" for i in range(4)]
GLOBEX = ["globex-0", "globex-1"]


def job(job_id: str, at: datetime, tenant: str, pool: str, kind: str, priority: str) -> JobEvent:
    return submitted(
        job_id,
        at=at,
        tenant=tenant,
        pool=pool,
        job_type=kind,
        priority=priority,
        queue=f"jobtrail.work.{pool}.{kind}",
    )


async def write_history(tracker: Tracker, clock: FakeClock) -> None:
    """acme's four urgent jobs wait 1 s and run 3 s; globex's two wait 20 s (over the 2 s
    target) and run 5 s; acme's batch job fails on pool flaky, is rerouted to steady when its
    5 s cooldown is over (at 10 s), waits 2 s there and runs 13 s."""

    def at(seconds: float) -> datetime:
        clock.at = T0 + timedelta(seconds=seconds)
        return clock.at

    steps: list[tuple[float, list[JobEvent]]] = [
        (0, [job(j, T0, j.split("-")[0], "gpu-a", "sync", "urgent") for j in ACME + GLOBEX]),
        (0, [job("batch-0", T0, "acme", "flaky", "batch", "bulk")]),
        (1, [reserved(j, at=T0 + timedelta(seconds=1)) for j in [*ACME, "batch-0"]]),
        (4, [completed(j, at=T0 + timedelta(seconds=4)) for j in ACME]),
        (4, [failed("batch-0", at=T0 + timedelta(seconds=4))]),
    ]
    for seconds, events in steps:
        at(seconds)
        await tracker.record(events)
    at(10)
    assert await tracker.fire_due_timers() == 1  # batch-0 rerouted to steady
    later: list[tuple[float, list[JobEvent]]] = [
        (12, [reserved("batch-0", at=T0 + timedelta(seconds=12), attempt=2)]),
        (20, [reserved(j, at=T0 + timedelta(seconds=20)) for j in GLOBEX]),
        (25, [completed(j, at=T0 + timedelta(seconds=25)) for j in GLOBEX]),
        (25, [completed("batch-0", at=T0 + timedelta(seconds=25), attempt=2)]),
    ]
    for seconds, events in later:
        at(seconds)
        await tracker.record(events)
    clock.at = NOW


@dataclass
class Stack:
    readers: Readers
    queries: SqlJobQueries
    metrics: Metrics
    clock: FakeClock
    settings: Settings
    env: dict[str, str]

    def client(self) -> httpx.AsyncClient:
        api = create_api(
            self.settings, self.readers, tokens=Tokens(), queries=self.queries, clock=self.clock
        )
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url=BASE)


@pytest.fixture(scope="module", params=["sqlite", "mongo+postgres"])
def urls(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    if request.param == "sqlite":
        folder = tmp_path_factory.mktemp("sla")
        yield f"sqlite+aiosqlite:///{folder / 'log.db'}", f"sqlite+aiosqlite:///{folder / 'jt.db'}"
        return
    mongo_base = request.getfixturevalue("mongo_base_url")
    with servers.pg_database() as pg:
        yield servers.mongo_database_url(mongo_base, f"jt_{uuid.uuid4().hex[:12]}"), pg


@pytest.fixture(scope="module")
async def stack(
    urls: tuple[str, str], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    log_url, sql_url = urls
    policy_file = tmp_path_factory.mktemp("policy") / "policy.toml"
    policy_file.write_text(POLICY)
    settings = Settings(log_url=log_url, sql_url=sql_url, policy_file=policy_file, http_port=0)
    await migrate(sql_url)
    if not settings.uses_mongo:
        await migrate(log_url)
    log, store = open_event_log(log_url), SqlProjectionStore(sql_url)
    await log.ensure_schema()
    readers = Readers(log, store, Policy.from_toml(POLICY))
    clock, metrics = FakeClock(), Metrics()
    tracker = Tracker(log, store, readers.policy, clock)
    tracker.on_projected = metrics.on_projected  # as Metrics.watch hooks it in `jobtrail serve`
    await write_history(tracker, clock)
    queries = SqlJobQueries(sql_url)
    env = {
        "JOBTRAIL_LOG_URL": log_url,
        "JOBTRAIL_SQL_URL": sql_url,
        "JOBTRAIL_POLICY_FILE": str(policy_file),
    }
    yield Stack(readers, queries, metrics, clock, settings, env)
    await queries.close()
    await readers.close()


async def get(stack: Stack, path: str, **params: str) -> httpx.Response:
    async with stack.client() as client:
        return await client.get(path, params={"since": SINCE, "until": UNTIL} | params)


def groups(body: dict[str, Any]) -> dict[tuple[str, ...], dict[str, Any]]:
    return {tuple(g[d] for d in body["by"]): g for g in body["groups"]}


def figures(measure: dict[str, Any]) -> tuple[Any, ...]:
    return measure["count"], measure["p50"], measure["p95"], measure["p99"]


async def test_sla_per_pool_job_type_priority_and_tenant(stack: Stack) -> None:
    response = await get(stack, "/sla")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["by"] == ["pool", "job_type", "priority", "tenant"]
    found = groups(body)
    assert set(found) == {
        ("gpu-a", "sync", "urgent", "acme"),
        ("gpu-a", "sync", "urgent", "globex"),
        ("flaky", "batch", "bulk", "acme"),
        ("steady", "batch", "bulk", "acme"),
    }
    acme = found["gpu-a", "sync", "urgent", "acme"]
    assert figures(acme["wait"]) == (4, 1.0, 1.0, 1.0)
    assert figures(acme["run"]) == (4, 3.0, 3.0, 3.0)
    assert figures(acme["end_to_end"]) == (4, 4.0, 4.0, 4.0)
    assert acme["wait"]["met"] == {"p95": True} and acme["wait"]["breaches"] == {}
    globex = found["gpu-a", "sync", "urgent", "globex"]
    assert figures(globex["wait"]) == (2, 20.0, 20.0, 20.0)
    assert globex["wait"]["targets"] == {"p95": 2.0}
    assert globex["wait"]["met"] == {"p95": False}
    assert globex["wait"]["breaches"] == {"p95": 2}
    assert globex["end_to_end"]["met"] == {"p99": True}
    flaky, steady = (
        found["flaky", "batch", "bulk", "acme"],
        found["steady", "batch", "bulk", "acme"],
    )
    assert figures(flaky["run"]) == (1, 3.0, 3.0, 3.0)  # the failed attempt
    assert flaky["end_to_end"]["count"] == 0
    assert figures(steady["wait"]) == (1, 2.0, 2.0, 2.0)  # from the reroute, not the submission
    assert figures(steady["end_to_end"]) == (1, 25.0, 25.0, 25.0)
    assert steady["wait"]["targets"] is None  # bulk has no targets
    assert body["breaches"] == 2


async def test_the_log_and_the_projection_give_the_same_figures(stack: Stack) -> None:
    readers, window = stack.readers, Window(T0 - timedelta(minutes=1), T0 + timedelta(minutes=1))
    from_log = (await sla_from_log(readers.log, readers.policy, window)).as_dict()
    from_sql = (await sla_from_projection(stack.queries, readers.policy, window)).as_dict()
    assert from_log.pop("source") == "log" and from_sql.pop("source") == "projection"
    assert from_log == from_sql
    assert sum(g["wait"]["count"] for g in from_log["groups"]) == 8
    over_api = (await get(stack, "/sla", source="projection", by="pool,tenant")).json()
    over_log = (await get(stack, "/sla", by="tenant,pool")).json()
    assert over_api.pop("source") == "projection" and over_log.pop("source") == "log"
    assert over_api == over_log
    assert set(groups(over_api)) == {
        ("gpu-a", "acme"),
        ("gpu-a", "globex"),
        ("flaky", "acme"),
        ("steady", "acme"),
    }


async def test_a_window_holds_the_intervals_that_end_in_it(stack: Stack) -> None:
    early = await get(stack, "/sla", until=(T0 + timedelta(seconds=5)).isoformat(), by="pool")
    found = groups(early.json())
    assert figures(found["gpu-a",]["wait"])[0] == 4  # globex was reserved at 20 s
    assert "steady" not in {key[0] for key in found}


async def test_fairness_flags_the_tenant_that_waits_longest(stack: Stack) -> None:
    response = await get(stack, "/fairness")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["starvation_factor"] == 3 and body["min_attempts"] == 2
    assert body["starved"] == [
        {"pool": "gpu-a", "tenant": "globex", "wait_p95": 20.0, "others_wait_p95": 1.0}
    ]
    pools = {p["pool"]: p for p in body["pools"]}
    gpu = pools["gpu-a"]
    assert (gpu["submitted"], gpu["started"], gpu["wait_p95"]) == (6, 6, 20.0)
    acme, globex = gpu["tenants"]
    assert (acme["tenant"], acme["submitted_share"], acme["started_share"]) == (
        "acme",
        0.6667,
        0.6667,
    )
    assert (globex["wait_p95"], globex["others_wait_p95"], globex["starved"]) == (20.0, 1.0, True)
    assert pools["steady"]["submitted"] == 0 and pools["steady"]["started"] == 1
    relaxed = (await get(stack, "/fairness", factor="50")).json()
    assert relaxed["starved"] == [] and relaxed["starvation_factor"] == 50


@pytest.mark.parametrize(
    ("path", "params", "message"),
    [
        ("/sla", {"by": "pool,node"}, "cannot group by 'node'"),
        ("/sla", {"since": UNTIL, "until": SINCE}, "must be before until"),
        ("/sla", {"source": "cache"}, "source"),
        ("/sla", {"since": "2026-12-03T09:00:00"}, "since"),
        ("/fairness", {"factor": "1"}, "factor"),
        ("/fairness", {"since": "2026-10-01T00:00:00Z"}, "longer than 31 days"),
    ],
)
async def test_a_bad_parameter_is_a_422_that_says_why(
    stack: Stack, path: str, params: dict[str, str], message: str
) -> None:
    response = await get(stack, path, **params)
    assert response.status_code == 422, response.text
    assert message in json.dumps(response.json())


def samples_by_labels(text: str, name: str) -> dict[tuple[str, str, str], float]:
    (family,) = [f for f in text_string_to_metric_families(text) if f.name == name]
    return {
        (s.labels["pool"], s.labels["job_type"], s.labels["priority"]): s.value
        for s in family.samples
        if s.name == f"{name}_count"
    }


async def test_the_tracker_observed_the_same_intervals_into_histograms(stack: Stack) -> None:
    text = stack.metrics.render().decode()
    report = (await get(stack, "/sla", by="pool,job_type,priority")).json()
    for measure in ("wait", "run", "end_to_end"):
        observed = samples_by_labels(text, f"jobtrail_job_{measure}_seconds")
        counted = {
            (g["pool"], g["job_type"], g["priority"]): g[measure]["count"]
            for g in report["groups"]
            if g[measure]["count"]
        }
        assert observed == counted, measure
    assert "job_id" not in text and "acme-0" not in text


def cli_json(stack: Stack, *args: str) -> Any:
    result = CliRunner().invoke(cli_app, list(args), env=stack.env)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


async def test_jobtrail_sla_and_fairness_print_what_the_api_answers(stack: Stack) -> None:
    window = ("--since", SINCE, "--until", UNTIL, "--json")
    for args, path, params in [
        (("sla", "--by", "pool,tenant"), "/sla", {"by": "pool,tenant"}),
        (("sla", "--source", "projection"), "/sla", {"source": "projection"}),
        (("fairness",), "/fairness", {}),
    ]:
        printed = await asyncio.to_thread(cli_json, stack, *args, *window)
        assert printed == (await get(stack, path, **params)).json()
    table = await asyncio.to_thread(
        CliRunner().invoke, cli_app, ["fairness", "--since", SINCE, "--until", UNTIL], env=stack.env
    )
    assert table.exit_code == 0 and "starved" in table.output
    table = await asyncio.to_thread(
        CliRunner().invoke,
        cli_app,
        ["sla", "--since", SINCE, "--until", UNTIL, "--by", "tenant"],
        env=stack.env,
    )
    assert table.exit_code == 0, table.output
    assert "20.0/20.0/20.0 s (n=2) 2 over" in table.output  # globex's waits

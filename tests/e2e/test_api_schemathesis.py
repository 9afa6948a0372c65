"""schemathesis against a live ``jobtrail api``: every operation of /openapi.json, positive and
negative data, with the operator token and without any, under every conformance check.

The process serves the scenario of test_api.py from the production stores (MongoDB-speaking log,
PostgreSQL projections); its operator actions publish to a RabbitMQ vhost of the test's own, where
a sink queue takes them. Examples are bounded and seeded so a run is reproducible and short.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator

import aio_pika
import httpx
import pytest
import schemathesis
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import events, from_schema
from schemathesis.generation import GenerationMode

from app.adapters.rabbit import EVENTS_EXCHANGE
from tests import servers
from tests.e2e.harness import api_process
from tests.e2e.test_api import OPERATE, READ, Backend, backend

assert backend  # the seeded stores of test_api.py (imported as a fixture)

CHECKS = [
    "not_a_server_error",
    "response_schema_conformance",
    "status_code_conformance",
    "content_type_conformance",
]
MAX_EXAMPLES = 25
SEED = 20261203


@pytest.fixture(scope="module", params=["mongo+postgres"])
def store_urls(request: pytest.FixtureRequest) -> Iterator[tuple[str, str, str]]:
    """Only the production stores here (test_api.py also runs SQLite)."""
    mongo_base = request.getfixturevalue("mongo_base_url")
    with servers.pg_database() as pg:
        log_url = servers.mongo_database_url(mongo_base, f"jt_{uuid.uuid4().hex[:12]}")
        yield request.param, log_url, pg


async def _bind_sink(rabbit_url: str) -> None:
    connection = await aio_pika.connect(rabbit_url)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            EVENTS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue("schemathesis.sink", arguments={"x-max-length": 100})
        await queue.bind(exchange, "#")


@pytest.fixture(scope="module")
def live_api(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``jobtrail api`` on a free loopback port, with read and operator tokens."""
    folder = tmp_path_factory.mktemp("schemathesis")
    with servers.rabbit_vhost() as rabbit:
        asyncio.run(_bind_sink(rabbit))
        env = {k: v for k, v in os.environ.items() if not k.startswith("JOBTRAIL_")}
        env |= backend.env | {
            "JOBTRAIL_HTTP_PORT": "0",
            "JOBTRAIL_RABBIT_URL": rabbit,
            "JOBTRAIL_READ_TOKEN": READ,
            "JOBTRAIL_OPERATOR_TOKEN": OPERATE,
            "JOBTRAIL_RABBIT_API_URL": f"http://127.0.0.1:{servers.free_port()}/api",
        }
        logfile = folder / "api.log"
        with api_process(env, logfile) as url:
            yield url
        text = logfile.read_text()
        assert "Traceback" not in text, text[-5000:]


def run_schemathesis(url: str, token: str | None) -> tuple[list[str], dict[str, set[str]]]:
    """Failures (one line each) of one seeded run over every operation and phase, and the checks
    that ran on each operation."""
    config = SchemathesisConfig()
    config.update(seed=SEED, max_failures=None)
    project = config.projects.override
    headers = {"Authorization": f"Bearer {token}"} if token else None
    project.update(headers=headers, workers=1, request_timeout=30)
    project.checks.update(included_check_names=CHECKS)
    project.generation.update(
        modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
        max_examples=MAX_EXAMPLES,
        deterministic=True,
        database="none",
    )
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", config=config)
    problems: list[str] = []
    checked: dict[str, set[str]] = {}
    finished = None
    for event in from_schema(schema).execute():
        if isinstance(event, events.NonFatalError | events.FatalError):
            problems.append(f"error: {event!r}"[:2000])
        elif isinstance(event, events.EngineFinished):
            finished = event
        elif isinstance(event, events.ScenarioFinished):
            label = event.recorder.label
            for nodes in event.recorder.checks.values():
                checked.setdefault(label, set()).update(node.name for node in nodes)
                problems.extend(
                    f"{label}: {node.name}: {node.failure_info.failure.title}"
                    for node in nodes
                    if node.failure_info is not None
                )
    assert finished is not None and finished.stop_reason == "completed", finished
    return problems, checked


@pytest.mark.parametrize("token", [OPERATE, None], ids=["operator", "anonymous"])
def test_every_operation_conforms_to_the_openapi_document(live_api: str, token: str | None) -> None:
    problems, checked = run_schemathesis(live_api, token)
    assert not problems, "\n".join(sorted(set(problems))[:40])
    spec = httpx.get(f"{live_api}/openapi.json", timeout=30).json()
    operations = {f"{m.upper()} {p}" for p, ops in spec["paths"].items() for m in ops}
    assert len(operations) >= 13
    assert operations <= set(checked)  # every operation was called and checked ...
    for label, names in checked.items():
        assert set(CHECKS) <= names, label  # ... by every check


def test_over_the_wire_a_refused_action_is_an_answer_not_a_dropped_connection(
    live_api: str,
) -> None:
    """The values that once made a 500 (some dropping the connection) answer 422 on a socket."""
    headers = {"Authorization": f"Bearer {OPERATE}"}
    with httpx.Client(base_url=live_api, headers=headers, timeout=30) as client:
        for path, body in [
            ("/jobs/job-waiting/cancel", {"actor": "ann\x00"}),
            ("/jobs/job-waiting/cancel", {"actor": "ann", "reason": "\x00"}),
            ("/redrive", {"actor": "ann", "pool": "p\x00"}),
            ("/redrive", {"actor": "ann", "since": "0001-01-01T00:00:00+05:00"}),
        ]:
            response = client.post(path, json=body)
            assert response.status_code == 422, response.text
            assert set(response.json()) == {"error", "detail"}
        forged = "WyIwMDAxLTAxLTAxVDAwOjAwOjAwKzA1OjAwIiwgImpvYi1kb25lIl0"  # year 1, +05:00
        response = client.get("/jobs", params={"cursor": forged})
        assert response.json() == {"error": "cursor is not one this API handed out", "detail": None}

"""The AsyncAPI document: built from the tracker's models, valid for @asyncapi/parser, true to the
messages a real tracker publishes, served with the running configuration, and kept in docs/."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import pytest
from jsonschema import Draft202012Validator
from pydantic import ValidationError
from typer.testing import CliRunner

from app.adapters.rabbit import DEAD_QUEUE, EVENTS_EXCHANGE, QUARANTINE_QUEUE, RabbitPublisher
from app.bootstrap import open_readers
from app.domain.events import EVENT_TYPES, parse_event
from app.entrypoints import asyncapi_cli
from app.entrypoints.api import create_api
from app.entrypoints.api_auth import Tokens
from app.entrypoints.cli import app as cli_app
from app.settings import Settings
from tests.e2e.harness import (
    ROOT,
    Tracker,
    get_messages,
    history,
    new_job_id,
    publish,
    status,
    wait_for,
    wait_status,
)

COPY = ROOT / "docs" / "asyncapi.json"
ROUTING = {
    "plugin": "least-failing",
    "version": "0.1.0",
    "fleet": [{"pool": "p2", "outcomes": 10, "failure_rate": 0.1, "wait_seconds": 1.5}],
    "pool": "p2",
    "cooldown_seconds": 2.5,
    "fallback": None,
}
REGENERATE = "regenerate it: jobtrail asyncapi --output docs/asyncapi.json (default settings)"
NODE_DIR = ROOT / ".node"  # gitignored; `make setup` fills it too
PARSER = ("@asyncapi/parser", "3.6.6")
DEFAULTS = Settings(
    rabbit_url=Settings.model_fields["rabbit_url"].default,
    partitions=Settings.model_fields["partitions"].default,
    policy_file=None,
)
PARSE = """
import { Parser } from '@asyncapi/parser';
import fs from 'fs';
const { document, diagnostics } = await new Parser().parse(fs.readFileSync(process.argv[1], 'utf8'));
console.log(JSON.stringify({
  parsed: document !== undefined,
  channels: document ? document.channels().all().map((c) => c.id()) : [],
  diagnostics: diagnostics.map((d) => ({ severity: d.severity, code: d.code, message: d.message,
                                         path: d.path.join('/') })),
}));
"""
EXAMPLE_EXTRA: dict[str, dict[str, Any]] = {
    "submitted": {
        "job_type": "sync", "model": "m", "priority": "urgent", "tenant": "t", "pool": "p",
        "queue": "q", "payload": {"k": 1}, "max_attempts": 3, "ttl_seconds": 60.0,
        "lease_seconds": 30.0, "retry": {"initial_interval_seconds": 1.0},
        "fallback_pools": ["p2"], "reroute_after_failures": 1,
    },
    "reserved": {"node_id": "n", "lease_seconds": 30.0},
    "heartbeat": {"node_id": "n"},
    "completed": {"node_id": "n", "duration_ms": 5},
    "failed": {"node_id": "n", "error_code": "oom", "error_message": "m", "retryable": True},
    "expired": {"reason": "lease", "detail": "d"},
    "routed": {"routing": ROUTING},
    "retried": {"pool": "p", "queue": "q", "routing": ROUTING},
    "rerouted": {"from_pool": "p", "pool": "p2", "queue": "q", "routing": ROUTING},
    "dead_lettered": {"reason": "poison", "detail": "d"},
    "cancelled": {"reason": "r"},
    "redriven": {"pool": "p", "queue": "q", "reason": "r"},
}  # fmt: skip


def validator(document: dict[str, Any], name: str) -> Draft202012Validator:
    """A validator for ``#/components/schemas/<name>`` of ``document`` (its $refs resolve)."""
    return Draft202012Validator(
        {"components": document["components"], "$ref": f"#/components/schemas/{name}"}
    )


def message_validators(
    document: dict[str, Any], message: str
) -> tuple[Draft202012Validator, Draft202012Validator]:
    """(payload, headers) validators of ``#/components/messages/<message>``."""
    declared = document["components"]["messages"][message]
    payload, headers = declared["payload"]["$ref"], declared["headers"]["$ref"]
    return (
        validator(document, payload.rsplit("/", 1)[1]),
        validator(document, headers.rsplit("/", 1)[1]),
    )


def example(event_type: str) -> dict[str, Any]:
    """An event of ``event_type`` with every field it can have, set."""
    envelope = {
        "version": 1,
        "type": event_type,
        "event_id": str(uuid.uuid4()),
        "job_id": "job-1",
        "occurred_at": datetime.now(UTC).isoformat(),
        "attempt": 1,
        "source": "cloud",
        "actor": "ops",
    }
    return envelope | EXAMPLE_EXTRA[event_type]


def parses(event: dict[str, Any]) -> bool:
    try:
        parse_event(json.dumps(event))
    except ValidationError:
        return False
    return True


def test_the_committed_copy_is_what_the_default_settings_generate() -> None:
    current = asyncapi_cli.render(asyncapi_cli.event_contract(DEFAULTS))
    assert COPY.read_text(encoding="utf-8") == current, REGENERATE


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_each_field_is_required_in_the_document_exactly_when_the_tracker_requires_it(
    event_type: str,
) -> None:
    document = asyncapi_cli.event_contract(DEFAULTS)
    channel = document["channels"][f"event.{event_type}"]
    assert channel["address"] == f"job.{event_type}"
    exchange = channel["bindings"]["amqp"]["exchange"]
    assert (exchange["name"], exchange["type"]) == ("jobtrail.events", "topic")
    payload, headers = message_validators(document, f"event.{event_type}")
    full = example(event_type)
    assert parses(full) and payload.is_valid(full)
    for field in full:
        without = {k: v for k, v in full.items() if k != field}
        assert parses(without) == payload.is_valid(without), f"{event_type} without {field}"
    with_null_actor = full | {"actor": None}
    assert parses(with_null_actor) == payload.is_valid(with_null_actor)
    assert not payload.is_valid(full | {"unknown": 1}) and not parses(full | {"unknown": 1})
    assert not payload.is_valid(full | {"type": "other"})
    model = type(parse_event(json.dumps(full))).__name__
    assert "type" in document["components"]["schemas"][model]["required"]  # the discriminator
    assert headers.is_valid({"x-jobtrail-job-id": "job-1"})
    assert not headers.is_valid({"x-jobtrail-job-id": "job 1"})


@pytest.fixture(scope="session")
def asyncapi_parser() -> Path:
    """The directory holding @asyncapi/parser, installed with npm if it is not there yet."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.fail("node and npm are needed for @asyncapi/parser (install Node.js 18 or newer)")
    package = NODE_DIR / "node_modules" / PARSER[0] / "package.json"
    if not package.exists() or json.loads(package.read_text())["version"] != PARSER[1]:
        NODE_DIR.mkdir(exist_ok=True)
        for name in ("package.json", "package-lock.json"):  # the lock pins every npm package
            shutil.copyfile(ROOT / "tools" / "asyncapi" / name, NODE_DIR / name)
        done = subprocess.run(
            ["npm", "ci", "--prefix", str(NODE_DIR), "--no-audit", "--no-fund"],
            capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(package.read_text())["version"] == PARSER[1]
    return NODE_DIR


def parse_with_asyncapi_parser(node_dir: Path, document: dict[str, Any], tmp: Path) -> Any:
    path = tmp / "asyncapi.json"
    path.write_text(asyncapi_cli.render(document), encoding="utf-8")
    done = subprocess.run(
        ["node", "--input-type=module", "-e", PARSE, str(path)],
        cwd=node_dir, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


@pytest.mark.parametrize(
    "rabbit_url", [DEFAULTS.rabbit_url, "amqps://jt:s3cret@rabbit.internal:5673/tenant%2Fa"]
)
def test_asyncapi_parser_finds_no_error_and_no_warning(
    asyncapi_parser: Path, rabbit_url: str, tmp_path: Path
) -> None:
    document = asyncapi_cli.event_contract(DEFAULTS.model_copy(update={"rabbit_url": rabbit_url}))
    result = parse_with_asyncapi_parser(asyncapi_parser, document, tmp_path)
    serious = [d for d in result["diagnostics"] if d["severity"] in (0, 1)]
    assert result["parsed"] and serious == []
    assert sorted(result["channels"]) == sorted(document["channels"])
    broken = document | {"operations": {"x": {"action": "send", "channel": {"$ref": "#/no"}}}}
    errors = parse_with_asyncapi_parser(asyncapi_parser, broken, tmp_path)["diagnostics"]
    assert any(d["severity"] == 0 for d in errors)  # the parser does report what is wrong


def test_every_channel_the_tracker_uses_is_declared() -> None:
    document = asyncapi_cli.event_contract(DEFAULTS)
    addresses = {c["address"] for c in document["channels"].values()}
    assert {
        "jobtrail.tracker.{partition}", "jobtrail.unrouted", "jobtrail.quarantine",
        "jobtrail.dead", "jobtrail.broker-dead", "jobtrail.work.{pool}.{job_type}",
    } <= addresses  # fmt: skip
    assert {f"job.{t}" for t in EVENT_TYPES} <= addresses
    partition = document["channels"]["partition"]["parameters"]["partition"]
    assert partition["enum"] == [str(i) for i in range(DEFAULTS.partitions)]
    assert document["channels"]["work"]["parameters"]["job_type"]["enum"] == [
        "sync", "polling", "batch", "stream",
    ]  # fmt: skip
    dlx = document["channels"]["brokerDlx"]["bindings"]["amqp"]["exchange"]
    assert (dlx["name"], dlx["type"]) == ("jobtrail.broker-dlx", "fanout")
    assert document["channels"]["work"]["x-jobtrail-priority-of-class"] == {
        "urgent": 9,
        "bulk": 3,
        "test": 0,
    }  # fmt: skip  (app/domain/default_policy.toml)
    assert "guest" not in json.dumps(document)  # no credentials, whatever the settings


def _stack_settings(stack: dict[str, str]) -> Settings:
    return DEFAULTS.model_copy(
        update={
            "rabbit_url": stack["JOBTRAIL_RABBIT_URL"],
            "policy_file": Path(stack["JOBTRAIL_POLICY_FILE"]),
        }
    )


def _valid(document: dict[str, Any], message: str, got: Any) -> None:
    """``got`` (an aio-pika message) matches the document's payload and headers of ``message``."""
    payload, headers = message_validators(document, message)
    payload.validate(json.loads(got.body))
    headers.validate(dict(got.headers))


def _taken(rabbit: str, queue: str, job: str) -> list[Any]:
    def mine() -> list[Any]:
        return [m for m in get_messages(rabbit, queue) if json.loads(m.body).get("job_id") == job]

    return wait_for(mine, f"{job}'s message on {queue}")  # type: ignore[no-any-return]


def test_messages_a_real_tracker_published_match_the_document(stack: dict[str, str]) -> None:
    rabbit = stack["JOBTRAIL_RABBIT_URL"]
    document = asyncapi_cli.event_contract(_stack_settings(stack))
    priority = document["channels"]["work"]["x-jobtrail-priority-of-class"]
    # The running policy's (harness.TEST_POLICY sets none: the built-in 5), not the default 9/3/0.
    assert priority == {"urgent": 5, "bulk": 5, "test": 5}
    retried, dead = new_job_id("retry"), new_job_id("dead")
    for job, klass in ((retried, "urgent"), (dead, "bulk")):
        publish(rabbit, lambda c, j=job, k=klass: c.submit(  # type: ignore[misc]
            j, job_type="sync", model="m", priority=k, tenant="t", pool=f"p-{j}", payload=[j],
        ))  # fmt: skip
        (first,) = _taken(rabbit, f"jobtrail.work.p-{job}.sync", job)
        _valid(document, "cloudJob", first)
    publish(
        rabbit,
        lambda c: c.reserved(retried, 1, "n"),
        lambda c: c.failed(retried, 1, "n", "oom"),
        lambda c: c.reserved(dead, 1, "n"),
        lambda c: c.failed(dead, 1, "n", "bad_input", retryable=False),
    )
    (again,) = _taken(rabbit, f"jobtrail.work.p-{retried}.sync", retried)
    _valid(document, "republishedJob", again)
    event = next(e for e in history(stack, retried) if e["type"] == "retried")
    assert again.message_id == again.headers["x-jobtrail-event-id"] == event["event_id"]
    assert again.priority == priority["urgent"]
    (parked,) = _taken(rabbit, DEAD_QUEUE, dead)
    _valid(document, "deadJob", parked)
    assert json.loads(parked.body)["reason"] == parked.headers["x-jobtrail-reason"]
    assert parked.priority == priority["bulk"]
    marker = new_job_id("bad")
    publish(rabbit, lambda c: c.publish_raw(json.dumps({"job_id": marker}).encode(), "job.x"))
    (quarantined,) = _taken(rabbit, QUARANTINE_QUEUE, marker)
    _valid(document, "quarantined", quarantined)
    assert quarantined.headers["x-jobtrail-reason"].startswith("invalid_event:")
    wrong_headers = dict(again.headers) | {"x-jobtrail-attempt": "2"}
    assert not message_validators(document, "republishedJob")[1].is_valid(wrong_headers)


def test_an_event_whose_routing_key_contradicts_its_type_is_recorded_and_reported(
    stack: dict[str, str],
) -> None:
    rabbit, job = stack["JOBTRAIL_RABBIT_URL"], new_job_id("misrouted")
    publish(rabbit, lambda c: c.submit(
        job, job_type="sync", model="m", priority="test", tenant="t", pool="p-misrouted",
    ))  # fmt: skip
    wait_for(lambda: status(stack, job), f"{job} to be recorded")
    body = example("completed") | {"job_id": job, "source": "n", "actor": None}
    publish(rabbit, lambda c: c.publish_raw(json.dumps(body).encode(), "job.failed", job))
    wait_status(stack, job, "completed")  # the body's type wins
    log = Path(stack["JOBTRAIL_POLICY_FILE"]).parent / "tracker-1.log"
    wanted = f"of job {job} has type completed but routing key job.failed"
    wait_for(lambda: wanted in log.read_text(errors="replace"), "the warning in the tracker's log")


@pytest.fixture
def served(tmp_path: Path) -> dict[str, Any]:
    """The document as an API on another broker and vhost serves it."""
    database = f"sqlite+aiosqlite:///{tmp_path / 'never-opened.db'}"
    settings = Settings(
        log_url=database,
        sql_url=database,
        rabbit_url="amqp://jobtrail:s3cret@rabbit.internal:5673/tenant-a",
        partitions=2,
    )

    async def go() -> httpx.Response:
        readers = open_readers(settings)
        app = create_api(settings, readers, tokens=Tokens.of(read="reader-token-0123456789"))
        try:
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://jobtrail"
            ) as client:
                return await client.get("/asyncapi.json")  # no token needed
        finally:
            await readers.close()

    response = asyncio.run(go())
    assert response.status_code == 200
    assert "s3cret" not in response.text and "jobtrail:" not in response.text
    return response.json()  # type: ignore[no-any-return]


def test_the_served_copy_names_the_api_s_broker_and_vhost(served: dict[str, Any]) -> None:
    assert served["servers"]["rabbitmq"] | {"description": ""} == {
        "host": "rabbit.internal:5673", "protocol": "amqp", "protocolVersion": "0.9.1",
        "pathname": "/tenant-a", "description": "",
    }  # fmt: skip
    vhosts = {
        binding.get("queue", binding.get("exchange", {})).get("vhost")
        for channel in served["channels"].values()
        for binding in [channel["bindings"]["amqp"]]
    }
    assert vhosts == {"tenant-a"}
    assert served["channels"]["partition"]["parameters"]["partition"]["enum"] == ["0", "1"]


def test_the_cli_prints_it_or_writes_it(tmp_path: Path) -> None:
    runner = CliRunner()
    printed = runner.invoke(cli_app, ["asyncapi"], env={})
    assert printed.exit_code == 0
    assert printed.stdout == asyncapi_cli.render(asyncapi_cli.event_contract(Settings()))
    target = tmp_path / "contract.json"
    written = runner.invoke(cli_app, ["asyncapi", "--output", str(target)], env={})
    assert written.exit_code == 0 and written.stdout == ""
    assert target.read_text(encoding="utf-8") == printed.stdout
    missing = tmp_path / "no" / "such" / "dir.json"
    refused = runner.invoke(cli_app, ["asyncapi", "--output", str(missing)], env={})
    assert refused.exit_code == 2
    assert refused.output == f"jobtrail: cannot write {missing}: No such file or directory\n"


def test_a_running_tracker_serves_the_document_of_its_own_vhost(
    fresh_stack: Tracker, rabbit_url: str
) -> None:
    with socket.socket() as probe:  # a free port for the tracker's API
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    fresh_stack.env |= {"JOBTRAIL_HTTP_HOST": "127.0.0.1", "JOBTRAIL_HTTP_PORT": str(port)}
    fresh_stack.start()
    document = httpx.get(f"http://127.0.0.1:{port}/asyncapi.json", timeout=30).json()
    vhost = rabbit_url.rsplit("/", 1)[1]
    assert vhost.startswith("jt-")  # tests/servers.py: a vhost of the test's own
    assert document["servers"]["rabbitmq"]["host"] == "127.0.0.1:5672"
    assert document["servers"]["rabbitmq"]["pathname"] == f"/{vhost}"
    assert document["channels"]["partition"]["bindings"]["amqp"]["queue"]["vhost"] == vhost
    assert document == asyncapi_cli.event_contract(_stack_settings(fresh_stack.env))


def test_re_keyed_and_quarantined_messages_match_the_document(rabbit_url: str) -> None:
    """What the tracker's publisher sends when it re-keys an event and when it quarantines."""
    document = asyncapi_cli.event_contract(DEFAULTS.model_copy(update={"rabbit_url": rabbit_url}))
    body = json.dumps(example("heartbeat")).encode()

    async def go() -> list[aio_pika.abc.AbstractIncomingMessage]:
        publisher = RabbitPublisher(rabbit_url)
        connection = await aio_pika.connect_robust(rabbit_url)
        try:
            await publisher.connect()
            channel = await connection.channel()
            probe = await channel.declare_queue(exclusive=True)
            await probe.bind(EVENTS_EXCHANGE, "job.#")
            await publisher.rekey(body, "job.heartbeat", "job-1")
            await publisher.quarantine(b"\xff not even UTF-8", "invalid_utf8: x at byte 0", {})
            rekeyed = await probe.get(timeout=10)
            quarantined = await (await channel.get_queue(QUARANTINE_QUEUE)).get(timeout=10)
            return [rekeyed, quarantined]
        finally:
            await publisher.close()
            await connection.close()

    rekeyed, quarantined = asyncio.run(go())
    assert (rekeyed.routing_key, rekeyed.body) == ("job.heartbeat", body)
    _valid(document, "event.heartbeat", rekeyed)
    assert dict(rekeyed.headers) == {"x-jobtrail-job-id": "job-1"}
    payload, headers = message_validators(document, "quarantined")
    headers.validate(dict(quarantined.headers))
    assert quarantined.body == b"\xff not even UTF-8"  # as it came: the payload is any bytes
    assert payload.schema == {"$ref": "#/components/schemas/QuarantinedBody"} | {
        "components": document["components"]
    }

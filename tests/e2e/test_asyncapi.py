"""The AsyncAPI document: generated from the FastStream app, served, and kept in docs/."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
from typer.testing import CliRunner

from app.bootstrap import open_readers
from app.domain.events import EVENT_TYPES
from app.entrypoints import asyncapi_cli
from app.entrypoints.api import create_api
from app.entrypoints.api_auth import Tokens
from app.entrypoints.cli import app as cli_app
from app.settings import Settings
from tests.e2e.harness import ROOT
from tests.e2e.test_dashboard_api import with_dashboard

COPY = ROOT / "docs" / "asyncapi.json"
REGENERATE = "regenerate it: jobtrail asyncapi --output docs/asyncapi.json"


def generated() -> dict[str, Any]:
    return asyncio.run(asyncapi_cli.event_contract())


def resolve(document: dict[str, Any], ref: str) -> Any:
    node: Any = document
    for part in ref.removeprefix("#/").split("/"):
        node = node[part.replace("%7B", "{").replace("%7D", "}")]
    return node


def test_the_committed_copy_is_what_the_app_generates_now() -> None:
    assert COPY.read_text(encoding="utf-8") == asyncapi_cli.render(generated()), REGENERATE


def test_every_event_type_is_a_message_with_its_schema() -> None:
    document = generated()
    assert document["asyncapi"] == "3.0.0"
    assert document["info"]["title"] == "Jobtrail event contract"
    for event_type in EVENT_TYPES:
        channel = document["channels"][f"jobtrail.events:job.{event_type}"]
        assert channel["address"] == f"job.{event_type}"
        exchange = channel["bindings"]["amqp"]["exchange"]
        assert (exchange["name"], exchange["type"]) == ("jobtrail.events", "topic")
        (message,) = channel["messages"].values()
        payload = resolve(document, resolve(document, message["$ref"])["payload"]["$ref"])
        assert payload["properties"]["type"]["const"] == event_type
        assert {"event_id", "job_id", "occurred_at", "attempt", "source"} <= set(
            payload["required"]
        )
        operation = document["operations"][f"jobtrail.events:job.{event_type}"]
        assert operation["action"] == "send"
        assert operation["bindings"]["amqp"]["deliveryMode"] == 2  # persistent
    partitions = [name for name in document["channels"] if name.startswith("jobtrail.tracker.")]
    assert len(partitions) == Settings.model_fields["partitions"].default
    assert {"jobtrail.broker-dead", "jobtrail.dead", "jobtrail.work.<pool>.<job_type>"} <= set(
        document["channels"]
    )
    assert "guest" not in json.dumps(document)  # no credentials, whatever the settings


def test_the_cli_prints_it_or_writes_it(tmp_path: Path) -> None:
    runner = CliRunner()
    printed = runner.invoke(cli_app, ["asyncapi"], env={})
    assert printed.exit_code == 0
    assert printed.stdout == asyncapi_cli.render(generated())
    target = tmp_path / "contract.json"
    written = runner.invoke(cli_app, ["asyncapi", "--output", str(target)], env={})
    assert written.exit_code == 0 and written.stdout == ""
    assert target.read_text(encoding="utf-8") == printed.stdout
    missing = tmp_path / "no" / "such" / "dir.json"
    refused = runner.invoke(cli_app, ["asyncapi", "--output", str(missing)], env={})
    assert refused.exit_code == 2
    assert refused.output == f"jobtrail: cannot write {missing}: No such file or directory\n"


def test_the_api_serves_it_without_a_token(tmp_path: Path) -> None:
    database = f"sqlite+aiosqlite:///{tmp_path / 'never-opened.db'}"
    settings = Settings(log_url=database, sql_url=database)

    async def go() -> httpx.Response:
        readers = open_readers(settings)
        tokens = Tokens.of(read="reader-token-0123456789")
        app = with_dashboard(
            create_api(settings, readers, tokens=tokens), settings, "http://127.0.0.1:9/api"
        )
        try:
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://jobtrail"
            ) as client:
                return await client.get("/asyncapi.json")
        finally:
            await readers.close()

    response = asyncio.run(go())
    assert response.status_code == 200
    assert response.json() == generated()

"""docs/operator.md runs as written: every ```sh example, in order, against a running tracker.

A ``jobtrail`` command must print what the following ```text (or ```json) block shows; a
``curl`` command is sent to the API in-process and must answer what the ```http block shows.
Actions (a redrive or a cancel that is not a dry run) run once; reads are retried until they
show what the page says, since the tracker records events asynchronously.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from app.bootstrap import open_readers
from app.entrypoints import asyncapi_cli, demo_cli
from app.entrypoints.api import create_api
from app.entrypoints.api_auth import Tokens
from app.entrypoints.cli import app as cli_app
from app.settings import Settings
from tests import servers
from tests.e2e.harness import ROOT, publish, status, wait_for, wait_status
from tests.e2e.test_dashboard_api import with_dashboard

assert asyncapi_cli and demo_cli  # importing them registers their commands

DOC = ROOT / "docs" / "operator.md"
BASE = "http://127.0.0.1:8080"
READ = "ops-doc-reader-token-0123"
OPERATE = "ops-doc-operator-token-0123"
TOKENS = {"$JOBTRAIL_READ_TOKEN": READ, "$JOBTRAIL_OPERATOR_TOKEN": OPERATE}
SETTLE_SECONDS = 30.0


@dataclass(frozen=True)
class Step:
    command: str
    kind: str
    expected: str

    @property
    def is_action(self) -> bool:
        """Changes state: run exactly once (everything else may run until it matches)."""
        words = self.command.split()
        if words[0] == "jobtrail":
            return words[1] in ("redrive", "cancel") and "--dry-run" not in words
        return "-X POST" in self.command and '"dry_run": true' not in self.command


def doc_steps() -> list[Step]:
    blocks = re.findall(r"```(\w+)\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    steps = []
    for (kind, body), (next_kind, expected) in itertools.pairwise(blocks):
        if kind == "sh":
            assert next_kind in ("text", "json", "http"), f"no expected output after: {body}"
            steps.append(Step(body.replace("\\\n", " ").strip(), next_kind, expected))
    return steps


def matches(expected: Any, actual: Any) -> bool:
    """Equality where "..." stands for any value, a "..." key for more keys, and a trailing
    "..." list item for more items."""
    if expected == "...":
        return True
    if isinstance(expected, dict):
        keys = set(expected) - {"..."}
        return (
            isinstance(actual, dict)
            and keys <= set(actual)
            and ("..." in expected or keys == set(actual))
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


def run_cli(env: dict[str, str], step: Step) -> None:
    words = shlex.split(step.command)
    assert words[0] == "jobtrail"
    result = CliRunner().invoke(cli_app, words[1:], env=env)
    failing = step.expected.startswith("jobtrail: ")
    assert (result.exit_code != 0) == failing, (step.command, result.output)
    if step.kind == "json":
        assert matches(json.loads(step.expected), json.loads(result.stdout)), result.stdout
    else:
        assert result.output.strip().splitlines() == step.expected.strip().splitlines()


def to_request(command: str) -> tuple[str, str, dict[str, str], bytes | None]:
    words = shlex.split(command)
    assert words[0] == "curl"
    method, headers, data, url = "GET", {}, None, None
    args = iter(words[1:])
    for word in args:
        if word == "-s":
            continue
        if word == "-H":
            name, _, value = next(args).partition(":")
            for variable, token in TOKENS.items():
                value = value.replace(variable, token)
            headers[name.strip()] = value.strip()
        elif word == "-X":
            method = next(args)
        elif word == "-d":
            data = next(args).encode()
        else:
            assert url is None and word.startswith(BASE), word
            url = word
    assert url is not None
    return method, url, headers, data


def send(env: dict[str, str], command: str) -> httpx.Response:
    method, url, headers, data = to_request(command)
    settings = Settings(
        rabbit_url=env["JOBTRAIL_RABBIT_URL"],
        log_url=env["JOBTRAIL_LOG_URL"],
        sql_url=env["JOBTRAIL_SQL_URL"],
    )

    async def go() -> httpx.Response:
        readers = open_readers(settings)
        tokens = Tokens.of(read=READ, operator=OPERATE)
        app = with_dashboard(
            create_api(settings, readers, tokens=tokens), settings, servers.RABBIT_API
        )
        transport = httpx.ASGITransport(app=app)
        try:
            async with (
                app.router.lifespan_context(app),
                httpx.AsyncClient(transport=transport, base_url=BASE) as client,
            ):
                return await client.request(method, url, headers=headers, content=data)
        finally:
            await readers.close()

    return asyncio.run(go())


def run_curl(env: dict[str, str], step: Step) -> None:
    response = send(env, step.command)
    head, _, body = step.expected.partition("\n\n")
    status_line, *header_lines = head.strip().splitlines()
    assert response.status_code == int(status_line.split()[1]), response.text[:500]
    for line in header_lines:
        name, _, value = line.partition(":")
        assert response.headers[name.strip()] == value.strip(), name
    if body.strip().startswith(("{", "[")):
        assert matches(json.loads(body), response.json()), response.text[:2000]
    else:
        for line in body.strip().splitlines():
            assert line == "..." or line in response.text.splitlines(), line


def run_step(env: dict[str, str], step: Step) -> None:
    if step.command.startswith("curl "):
        run_curl(env, step)
    else:
        run_cli(env, step)


def prepare(env: dict[str, str]) -> None:
    """The four jobs the page's examples act on."""
    rabbit = env["JOBTRAIL_RABBIT_URL"]
    for job, pool, node, code, message in (
        ("job-7f3a", "gpu-b", "node-4", "bad_input", "the prompt is empty"),
        ("job-9c41", "gpu-c", "node-2", "model_not_found", "no model 'llama-9'"),
    ):
        publish(
            rabbit,
            lambda c, job=job, pool=pool: c.submit(
                job, job_type="sync", model="llama-3-8b", priority="bulk", tenant="acme", pool=pool
            ),
        )
        wait_for(lambda job=job: status(env, job), f"the submission of {job}")
        publish(
            rabbit,
            lambda c, job=job, node=node: c.reserved(job, 1, node),
            lambda c, job=job, node=node, code=code, message=message: c.failed(
                job, 1, node, code, message, retryable=False
            ),
        )
        wait_status(env, job, "dead_lettered")
    for job in ("job-2d88", "job-5e10"):
        publish(
            rabbit,
            lambda c, job=job: c.submit(
                job,
                job_type="sync",
                model="llama-3-8b",
                priority="bulk",
                tenant="acme",
                pool="gpu-a",
            ),
        )
        wait_status(env, job, "queued")


def test_the_page_has_its_examples() -> None:
    steps = doc_steps()
    assert len(steps) >= 15
    assert sum(step.is_action for step in steps) == 9  # each one follows a settling read
    assert {step.command.split()[0] for step in steps} == {"jobtrail", "curl"}


def test_the_examples_run_as_written(
    stack: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # where `jobtrail asyncapi --output asyncapi.json` writes
    env = {k: v for k, v in stack.items() if k.startswith("JOBTRAIL_")}
    prepare(env)
    for step in doc_steps():
        if step.is_action:
            run_step(env, step)
            continue
        deadline = time.monotonic() + SETTLE_SECONDS
        while True:
            try:
                run_step(env, step)
                break
            except AssertionError as exc:
                if time.monotonic() > deadline:
                    shown = f"{step.command}\n{exc!s:.2000}"
                    pytest.fail(f"this example never showed what the page says: {shown}")
                time.sleep(0.3)

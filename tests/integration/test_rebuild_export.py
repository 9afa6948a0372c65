"""The analysts' commands against real stores: rebuild, replay, analyze, whatif and export.

Each log (MongoDB-speaking server with PostgreSQL projections; SQLite holding both; PostgreSQL
holding both) is filled by the real ``Tracker`` service with the real adapters, its timers driven
by a fake clock that fires each one exactly when due (the script of tests/unit/test_whatif.py:
retries, a reroute, lease and TTL expiries, dead letters, a redrive, a cancellation).
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection
from typer.testing import CliRunner

import app.entrypoints.analysis_cli  # noqa: F401  (registers the analysts' commands)
from app.adapters.anchor_store import anchor_metadata
from app.adapters.log_factory import open_event_log
from app.adapters.sql_log import log_metadata
from app.adapters.sql_models import jobs, projection_metadata
from app.adapters.sql_rebuild import SqlRebuildTables
from app.adapters.sql_schema import make_engine, migrate
from app.adapters.sql_store import SqlProjectionStore
from app.domain.chain import RecordedEvent
from app.domain.events import canonical_json
from app.entrypoints.cli import app as cli_app
from app.entrypoints.cli import main
from app.services.rebuild import job_histories, rebuild
from app.services.whatif import simulate
from tests import servers
from tests.unit.test_whatif import END, LIVE, LIVE_POLICY_TOML, at, real_history

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "analyst.md"
JOB_INDEXES = {str(index.name) for index in jobs.indexes}


@dataclass
class Stack:
    kind: str
    log_url: str
    sql_url: str
    env: dict[str, str]
    workdir: Path


async def _fill(log_url: str, sql_url: str) -> None:
    await migrate(sql_url)
    log = open_event_log(log_url)
    await log.ensure_schema()
    store = SqlProjectionStore(sql_url)
    try:
        await real_history(log, store)
    finally:
        await log.close()
        await store.close()


@contextmanager
def _databases(
    kind: str, request: pytest.FixtureRequest, workdir: Path
) -> Iterator[tuple[str, str]]:
    """(log_url, sql_url) of fresh databases for one kind of stack."""
    if kind == "sqlite":
        url = f"sqlite+aiosqlite:///{workdir / 'jobtrail.db'}"
        yield url, url
        return
    with servers.pg_database() as pg:
        if kind == "pg":
            yield pg, pg
            return
        base = request.getfixturevalue("mongo_base_url")
        yield servers.mongo_database_url(base, f"jt_{workdir.name[-12:]}"), pg


@pytest.fixture(scope="module", params=["mongo+pg", "sqlite", "pg"])
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp(f"analyst-{request.param.replace('+', '-')}")
    with _databases(request.param, request, workdir) as (log_url, sql_url):
        asyncio.run(_fill(log_url, sql_url))
        policy = workdir / "live.toml"
        policy.write_text(LIVE_POLICY_TOML)
        env = {
            "JOBTRAIL_LOG_URL": log_url,
            "JOBTRAIL_SQL_URL": sql_url,
            "JOBTRAIL_POLICY_FILE": str(policy),
        }
        yield Stack(request.param, log_url, sql_url, env, workdir)


def jobtrail(stack: Stack, *args: str, **env: str) -> tuple[int, str, str]:
    """Run a command in-process; (exit code, stdout, stderr)."""
    result = CliRunner().invoke(cli_app, list(args), env=stack.env | env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


async def _sql(url: str, statement: str) -> None:
    engine = make_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text(statement))
    finally:
        await engine.dispose()


def _schema(connection: Connection) -> dict[str, Any]:
    context = MigrationContext.configure(connection)
    differences = [
        d
        for d in compare_metadata(context, [projection_metadata, log_metadata, anchor_metadata])  # type: ignore[arg-type]
        if "__previous" not in repr(d)
    ]
    inspector = inspect(connection)
    indexes = {ix["name"] for ix in inspector.get_indexes("jobs")}
    return {
        "differences": differences,
        "indexes": indexes,
        "tables": set(inspector.get_table_names()),
    }


async def schema(url: str) -> dict[str, Any]:
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(_schema)
    finally:
        await engine.dispose()


# --- rebuild -----------------------------------------------------------------------------------


def test_rebuild_proves_the_projection_equal_and_swaps(stack: Stack) -> None:
    code, out, _ = jobtrail(stack, "rebuild", "--yes")
    assert code == 0, out
    assert "replayed" in out and "(12 jobs): 12 identical, 0 different" in out
    assert "swapped: the rebuilt tables are live" in out
    found = asyncio.run(schema(stack.sql_url))
    assert {"jobs__previous", "attempts__previous", "timers__previous"} <= found["tables"]
    assert not any(t.endswith("__rebuild") for t in found["tables"])
    assert found["indexes"] == JOB_INDEXES
    assert found["differences"] == []  # the swapped tables are exactly the migrated schema
    code, out, _ = jobtrail(stack, "rebuild", "--yes")  # again: the previous tables are replaced
    assert code == 0 and "12 identical" in out


async def _rebuild_under_an_open_store(stack: Stack) -> tuple[Any, Any, Any]:
    store = SqlProjectionStore(stack.sql_url)
    log = open_event_log(stack.log_url)
    target = SqlRebuildTables(stack.sql_url)
    try:
        before = await store.get_job("lease-1")
        result = await rebuild(log, target, LIVE)
        after = await store.get_job("lease-1")
        return before, result, after
    finally:
        await target.close()
        await log.close()
        await store.close()


def test_a_store_opened_before_the_swap_reads_the_new_tables(stack: Stack) -> None:
    before, result, after = asyncio.run(_rebuild_under_an_open_store(stack))
    assert result.swapped and before is not None and before == after


def test_rebuild_names_a_tampered_row_and_swaps_only_when_forced(stack: Stack) -> None:
    asyncio.run(_sql(stack.sql_url, "UPDATE jobs SET status = 'queued' WHERE job_id = 'retry-1'"))
    asyncio.run(_sql(stack.sql_url, "DELETE FROM timers"))  # no live job has one: no change
    code, out, _ = jobtrail(stack, "rebuild", "--yes")
    assert code == 1, out
    assert "11 identical, 1 different" in out
    assert "DIFF retry-1 jobs.status: live 'queued', rebuilt 'completed'" in out
    assert "not swapped" in out
    code, out, _ = jobtrail(stack, "rebuild", "--yes", "--force")
    assert code == 1 and "swapped: the rebuilt tables are live" in out
    code, out, _ = jobtrail(stack, "rebuild", "--dry-run")
    assert code == 0 and "12 identical" in out and "not swapped" in out


def test_rebuild_asks_before_swapping(stack: Stack) -> None:
    code, _, err = jobtrail(stack, "rebuild")
    assert code == 2 and "pass --yes" in err


# --- whatif ------------------------------------------------------------------------------------


async def _histories(log_url: str) -> dict[str, list[RecordedEvent]]:
    log = open_event_log(log_url)
    try:
        return {h[0].job_id: h async for h in job_histories(log.scan())}
    finally:
        await log.close()


def test_the_live_policy_reproduces_the_recorded_log_exactly(stack: Stack) -> None:
    histories = asyncio.run(_histories(stack.log_url))
    assert len(histories) == 12
    for job_id, real in histories.items():
        replayed = simulate(real, LIVE, at(END))
        assert [(r.seq, r.recorded_at, canonical_json(r.event)) for r in replayed] == [
            (r.seq, r.recorded_at, canonical_json(r.event)) for r in real
        ], job_id
    code, out, _ = jobtrail(
        stack,
        "whatif",
        "--policy",
        stack.env["JOBTRAIL_POLICY_FILE"],
        "--as-of",
        at(END).isoformat(),
        "--json",
    )
    assert code == 0
    report = json.loads(out)
    assert report["jobs_changed"] == 0 and report["real"] == report["simulated"]
    assert report["real"]["retried"] == 3 and report["real"]["rerouted"] == 1
    assert report["real"]["lease_expiries"] == 2 and report["real"]["expired"] == 1


def test_whatif_shows_another_policy_side_by_side(stack: Stack) -> None:
    strict = stack.workdir / "strict.toml"
    strict.write_text(LIVE_POLICY_TOML.replace("max_attempts = 3", "max_attempts = 1"))
    code, out, _ = jobtrail(
        stack, "whatif", "--policy", str(strict), "--as-of", at(END).isoformat()
    )
    assert code == 0
    assert "under strict.toml" in out
    assert re.search(r"dead-lettered\W+4\W+8\W+\+4", out), out
    assert "4 of 12 jobs would have been decided differently" in out


# --- replay and analyze ------------------------------------------------------------------------


def test_replay_streams_the_window_in_recorded_order(stack: Stack) -> None:
    code, out, _ = jobtrail(
        stack,
        "replay",
        "--from",
        at(2).isoformat(),
        "--to",
        at(40).isoformat(),
        "--type",
        "failed",
        "--type",
        "retried",
    )
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 9
    assert {e["type"] for e in lines} == {"failed", "retried"}
    keys = [(e["recorded_at"], e["job_id"], e["seq"]) for e in lines]
    assert keys == sorted(keys)
    code, out, _ = jobtrail(stack, "replay", "--job", "lease-1")
    assert [json.loads(line)["type"] for line in out.splitlines()] == [
        "submitted",
        "reserved",
        "expired",
        "retried",
        "completed",
        "reserved",
        "heartbeat",
        "completed",
    ]


def test_analyze_reports_as_json_tables_and_html(stack: Stack) -> None:
    page = stack.workdir / "report.html"
    code, out, err = jobtrail(stack, "analyze", "--json", "--html", str(page))
    assert code == 0, err
    report = json.loads(out)
    assert report["overall"]["attempts"] == 15 and report["overall"]["failure_rate"] == 0.6
    assert report["lease_expiries_by_job_type"] == {"sync": 2}
    assert report["dead_letter_reasons"] == {
        "non_retryable": 2,
        "retries_exhausted": 2,
        "poison": 1,
    }
    html = page.read_text()
    assert "<svg" in html and "<script" not in html and "Failure rate by pool" in html
    code, out, _ = jobtrail(stack, "analyze", "--since", at(100).isoformat())
    assert code == 0 and "By node" in out and "lease_expired" not in out


# --- export ------------------------------------------------------------------------------------


def test_export_streams_every_event_in_each_format(stack: Stack) -> None:
    import pyarrow.parquet as pq  # type: ignore[import-untyped]

    code, out, _ = jobtrail(stack, "export", "--format", "jsonl")
    assert code == 0
    events = [json.loads(line) for line in out.splitlines()]
    histories = asyncio.run(_histories(stack.log_url))
    assert len(events) == sum(len(h) for h in histories.values()) == 56
    assert [(e["job_id"], e["seq"]) for e in events] == sorted(
        (e["job_id"], e["seq"]) for e in events
    )
    target = stack.workdir / "events.parquet"
    code, out, err = jobtrail(
        stack, "export", "--format", "parquet", "--output", str(target), FORCE_COLOR="1"
    )
    assert code == 0 and out == "" and "exporting" in err  # the progress bar is on stderr
    table = pq.read_table(target)
    assert (
        table.num_rows == 56
        and str(table.schema.field("recorded_at").type) == "timestamp[us, tz=UTC]"
    )
    assert table.column("event_id").to_pylist() == [e["event_id"] for e in events]
    code, out, _ = jobtrail(stack, "export", "--format", "csv", "--projections")
    rows = out.splitlines()
    assert code == 0 and rows[0].startswith("job_id,status,attempt") and len(rows) == 13


# --- bad arguments -----------------------------------------------------------------------------


def run_main(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str]:
    """The console script in-process: (exit code, standard error)."""
    monkeypatch.setattr(sys, "argv", ["jobtrail", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    return int(exit_info.value.code or 0), capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("replay", "--from", "yesterday"), "'yesterday' is not an ISO-8601 instant"),
        (("replay", "--to", "2026-03-02T08:00:00"), "has no UTC offset"),
        (("analyze", "--since", "2026-13-01"), "is not an ISO-8601 instant"),
        (("replay", "--type", "finished"), "unknown event type 'finished'"),
        (("replay", "--job", "bad id!"), "is not a job id"),
        (("export", "--format", "xml"), "'xml' is not one of 'jsonl', 'csv', 'parquet'"),
        (("whatif", "--policy", "/nonexistent/other.toml"), "cannot read policy file"),
        (("whatif",), "name the other policy (--policy FILE), a routing plugin"),
    ],
)
def test_bad_arguments_are_one_line_and_a_non_zero_exit(
    args: tuple[str, ...],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, err = run_main(monkeypatch, capsys, *args)
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jobtrail: ") and message in lines[0], err


def test_an_invalid_policy_file_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[defaults]\nmax_attempts = 0\n")
    code, err = run_main(monkeypatch, capsys, "whatif", "--policy", str(bad))
    assert (
        code == 2
        and err.strip()
        == f"jobtrail: {bad}: invalid policy: defaults.max_attempts: Input should be greater than or equal to 1"
    )


# --- the analyst's page ------------------------------------------------------------------------


def doc_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOCS.read_text(), flags=re.S)


@pytest.mark.parametrize("stack", ["mongo+pg"], indirect=True)
def test_the_analyst_page_examples_run(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(stack.workdir)
    (stack.workdir / "strict.toml").write_text(doc_blocks("toml")[0])
    commands = [
        line
        for block in doc_blocks("sh")
        for line in block.splitlines()
        if line.startswith("jobtrail ")
    ]
    assert len(commands) >= 8
    for command in commands:
        code, out, err = jobtrail(stack, *command.split()[1:])
        assert code == 0, f"{command}: {out}{err}"

"""Tampering applied directly to the stored log (MongoDB-speaking server, PostgreSQL, SQLite) is
caught by ``jobtrail verify`` and / or ``jobtrail verify-anchors``, which name the job and seq or
the day; the auditors' commands' bad arguments are one line on standard error; and every command
on docs/auditor.md runs as shown.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shlex
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import pytest
from pymongo import MongoClient
from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import create_async_engine
from typer.testing import CliRunner

import app.entrypoints.audit_cli  # noqa: F401  (registers the auditors' commands)
from app.adapters.log_entries import chain_entry
from app.adapters.log_factory import open_event_log
from app.adapters.memory_store import InMemoryProjectionStore
from app.adapters.sql_log import events_table
from app.bootstrap import load_policy
from app.domain.events import (
    Completed,
    Failed,
    Heartbeat,
    JobEvent,
    Reserved,
    Submitted,
)
from app.entrypoints.cli import app as cli_app
from app.services.tracking import Tracker
from app.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DAY = "2026-11-20"
T = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
NS = uuid.UUID("5d1f7a9e-2b0c-4e36-9f51-3a7c8e0d4b12")
VICTIM = "victim"


def _env(job: str, what: str, at: datetime, attempt: int = 1) -> dict[str, Any]:
    return {
        "event_id": uuid.uuid5(NS, f"{job}|{what}|{attempt}"),
        "job_id": job,
        "occurred_at": at,
        "attempt": attempt,
        "source": "cloud" if what == "submitted" else "node-1",
    }


def _submitted(job: str, at: datetime, pool: str = "gpu-a") -> Submitted:
    return Submitted(
        job_type="batch",
        model="llama-3-8b",
        priority="bulk",
        tenant="acme",
        pool=pool,
        queue=f"jobtrail.work.{pool}.batch",
        **_env(job, "submitted", at),
    )


async def _seed(log_url: str) -> None:
    """victim: 4 events (09:00-09:03); two bystanders: 3 events each (09:00-09:10)."""
    log = open_event_log(log_url)
    await log.ensure_schema()
    try:
        minute = timedelta(minutes=1)
        for job in (VICTIM, "bystander-1", "bystander-2"):
            await log.append(_submitted(job, T), T)
        victim: list[JobEvent] = [
            Reserved(node_id="node-1", **_env(VICTIM, "reserved", T)),
            Heartbeat(node_id="node-1", **_env(VICTIM, "heartbeat", T)),
            Completed(node_id="node-1", **_env(VICTIM, "completed", T)),
        ]
        for n, event in enumerate(victim, start=1):
            await log.append(event, T + n * minute)
        for job in ("bystander-1", "bystander-2"):
            await log.append(Reserved(node_id="node-2", **_env(job, "reserved", T)), T + 5 * minute)
            await log.append(Completed(node_id="node-2", **_env(job, "done", T)), T + 10 * minute)
    finally:
        await log.close()


class StoredLog(Protocol):
    """Direct access to the stored entries, as an attacker with write access has it."""

    def get(self, job: str, seq: int) -> dict[str, Any]: ...
    def set(self, job: str, seq: int, fields: dict[str, Any]) -> None: ...
    def delete(self, job: str, seq: int) -> None: ...
    def insert(self, row: dict[str, Any]) -> None: ...


class MongoStoredLog:
    def __init__(self, url: str) -> None:
        self._client: MongoClient[dict[str, Any]] = MongoClient(url, tz_aware=True)
        self._events = self._client.get_default_database()["events"]

    def get(self, job: str, seq: int) -> dict[str, Any]:
        doc = self._events.find_one({"job_id": job, "seq": seq}, {"_id": 0})
        assert doc is not None
        return doc

    def set(self, job: str, seq: int, fields: dict[str, Any]) -> None:
        assert self._events.update_one({"job_id": job, "seq": seq}, {"$set": fields}).modified_count

    def delete(self, job: str, seq: int) -> None:
        assert self._events.delete_one({"job_id": job, "seq": seq}).deleted_count == 1

    def insert(self, row: dict[str, Any]) -> None:
        self._events.insert_one(dict(row))

    def close(self) -> None:
        self._client.close()


class SqlStoredLog:
    def __init__(self, url: str) -> None:
        self._url = url

    def _run(self, statement: Any) -> Any:
        async def go() -> Any:
            engine = create_async_engine(self._url)
            try:
                async with engine.begin() as conn:
                    result = await conn.execute(statement)
                    return result.mappings().all() if result.returns_rows else result.rowcount
            finally:
                await engine.dispose()

        return asyncio.run(go())

    def _where(self, job: str, seq: int) -> Any:
        c = events_table.c
        return (c.job_id == job) & (c.seq == seq)

    def get(self, job: str, seq: int) -> dict[str, Any]:
        [row] = self._run(select(events_table).where(self._where(job, seq)))
        return {k: v for k, v in row.items() if k != "id"}

    def set(self, job: str, seq: int, fields: dict[str, Any]) -> None:
        assert self._run(update(events_table).where(self._where(job, seq)).values(fields)) == 1

    def delete(self, job: str, seq: int) -> None:
        assert self._run(delete(events_table).where(self._where(job, seq))) == 1

    def insert(self, row: dict[str, Any]) -> None:
        self._run(insert(events_table).values(**row))

    def close(self) -> None:
        return None


@pytest.fixture(params=["mongodb", "postgresql", "sqlite"])
def log_url(request: pytest.FixtureRequest) -> str:
    names = {"sqlite": "sqlite_url", "postgresql": "pg_url", "mongodb": "mongo_url"}
    return str(request.getfixturevalue(names[request.param]))


@pytest.fixture
def env(log_url: str, tmp_path: Path) -> dict[str, str]:
    return {
        "JOBTRAIL_LOG_URL": log_url,
        "JOBTRAIL_SQL_URL": f"sqlite+aiosqlite:///{tmp_path / 'projections.db'}",
    }


@pytest.fixture
def stored(log_url: str) -> Iterator[StoredLog]:
    store = MongoStoredLog(log_url) if log_url.startswith("mongodb") else SqlStoredLog(log_url)
    yield store
    store.close()


@dataclass
class Result:
    code: int
    out: str
    err: str


def jobtrail(env: dict[str, str | None], *args: str) -> Result:
    """Run a command in-process, with only the given JOBTRAIL_ settings."""
    clean: dict[str, str | None] = {k: None for k in os.environ if k.startswith("JOBTRAIL_")}
    result = CliRunner().invoke(cli_app, list(args), env=clean | env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return Result(result.exit_code, result.stdout, result.stderr)


def _forged(job: str, seq: int, prev_hash: str, at: datetime) -> dict[str, Any]:
    """An entry with a self-consistent hash, as someone who knows the chain rule can make."""
    event = Heartbeat(node_id="node-evil", **(_env(job, "forged", at) | {"event_id": uuid.uuid4()}))
    entry = chain_entry(event, at, seq - 1, prev_hash)
    return {
        "event_id": entry.event_id,
        "job_id": job,
        "seq": seq,
        "type": event.type,
        "attempt": event.attempt,
        "occurred_at": at,
        "recorded_at": at,
        "prev_hash": entry.prev_hash,
        "hash": entry.hash,
        "data": entry.data,
    }


def alter_data(log: StoredLog) -> None:
    data = log.get(VICTIM, 2)["data"]
    log.set(VICTIM, 2, {"data": data.replace('"node_id":"node-1"', '"node_id":"node-9"')})
    assert log.get(VICTIM, 2)["data"] != data


def alter_hash(log: StoredLog) -> None:
    log.set(VICTIM, 2, {"hash": hashlib.sha256(b"forged").hexdigest()})


def delete_middle(log: StoredLog) -> None:
    log.delete(VICTIM, 2)


def delete_last(log: StoredLog) -> None:
    log.delete(VICTIM, 4)


def insert_middle(log: StoredLog) -> None:
    """A forged entry made seq 3: the later entries are renumbered (top first) to make room."""
    for seq in (4, 3):
        log.set(VICTIM, seq, {"seq": seq + 1})
    log.insert(_forged(VICTIM, 3, log.get(VICTIM, 2)["hash"], T + timedelta(seconds=90)))


def append_forged(log: StoredLog) -> None:
    """A forged entry after the job's last one, recorded (it claims) during the anchored day."""
    log.insert(_forged(VICTIM, 5, log.get(VICTIM, 4)["hash"], T + timedelta(minutes=4)))


def swap_seqs(log: StoredLog) -> None:
    """Entries 2 and 3 swap seq numbers, through a temporary value (the unique index stays on)."""
    log.set(VICTIM, 2, {"seq": -1})
    log.set(VICTIM, 3, {"seq": 2})
    log.set(VICTIM, -1, {"seq": 3})


@pytest.mark.parametrize(
    ("tamper", "verify_finds", "anchor_change"),
    [
        (alter_data, "at seq 2: hash does not match the entry's content", None),
        (alter_hash, "at seq 2: hash does not match the entry's content", "root "),
        (delete_middle, "at seq 3: seq 3 where 2 was expected", "(-1)"),
        (delete_last, None, "(-1)"),
        (insert_middle, "at seq 4: prev_hash does not match", "(+1)"),
        (append_forged, None, "(+1)"),
        (swap_seqs, "at seq 2: prev_hash does not match", None),
    ],
)
def test_tampering_with_the_stored_log_is_detected(
    env: dict[str, str],
    stored: StoredLog,
    log_url: str,
    tamper: Callable[[StoredLog], None],
    verify_finds: str | None,
    anchor_change: str | None,
) -> None:
    asyncio.run(_seed(log_url))
    anchored = jobtrail(env, "anchor", "--day", DAY)
    assert anchored.code == 0 and anchored.out.startswith(f"anchored {DAY}: root "), anchored
    assert "over 10 entries" in anchored.out
    assert jobtrail(env, "verify").code == 0
    assert jobtrail(env, "verify-anchors").code == 0

    tamper(stored)

    verify = jobtrail(env, "verify")
    anchors = jobtrail(env, "verify-anchors")
    assert anchors.code == 1, anchors
    assert anchors.out.startswith(f"CHANGED {DAY}: "), anchors.out
    assert "verified 1 anchored days: 0 unchanged, 1 changed" in anchors.err
    if anchor_change is not None:
        assert anchor_change in anchors.out.splitlines()[0]
    if verify_finds is None:
        # Only the anchor can see it: every remaining chain is intact.
        assert verify.code == 0, verify
        assert "BROKEN" not in anchors.out
        return
    broken = f"BROKEN {VICTIM} {verify_finds}"
    assert verify.code == 1 and broken in verify.out, verify
    assert broken in anchors.out  # the day is named, and the job and seq too
    ranged = jobtrail(env, "verify-range", "--since", DAY, "--until", "2026-11-21")
    assert ranged.code == 1 and broken in ranged.out, ranged
    as_json = jobtrail(env, "verify-range", "--since", DAY, "--until", "2026-11-21", "--json")
    report = json.loads(as_json.out)
    assert (as_json.code, report["jobs"], len(report["broken"])) == (1, 3, 1)
    first = report["broken"][0]
    assert f"BROKEN {first['job_id']} at seq {first['seq']}: {first['reason']}" in verify.out
    assert "verified 3 jobs with events recorded in" in ranged.err
    assert [line for line in verify.out.splitlines() if line.startswith("BROKEN")] == [
        line for line in ranged.out.splitlines() if line.startswith("BROKEN")
    ]


# --- every stored field of an entry is proven ---------------------------------------------------

AT_SEQ_2 = f"BROKEN {VICTIM} at seq 2: "
GAP_AT_3 = f"BROKEN {VICTIM} at seq 3: seq 3 where 2 was expected"
FIELD_EDITS: dict[str, tuple[Any, list[str]]] = {
    "event_id": (
        "00000000-0000-4000-8000-000000000000",
        [AT_SEQ_2 + "stored data names another job or event id"],
    ),
    "job_id": (
        f"{VICTIM}-2",
        [GAP_AT_3, f"BROKEN {VICTIM}-2 at seq 2: seq 2 where 1 was expected"],
    ),
    "seq": (9, [GAP_AT_3]),
    "type": (
        "completed",
        [AT_SEQ_2 + "stored type 'completed' is not the event's type 'reserved'"],
    ),
    "attempt": (2, [AT_SEQ_2 + "stored attempt 2 is not the event's attempt 1"]),
    "occurred_at": (
        T - timedelta(hours=1),
        [
            AT_SEQ_2 + "stored occurred_at 2026-11-20T08:00:00+00:00 is not the event's "
            "occurred_at 2026-11-20T09:00:00+00:00"
        ],
    ),
    "recorded_at": (T + timedelta(seconds=61), [AT_SEQ_2 + "hash does not match"]),
    "prev_hash": ("e" * 64, [AT_SEQ_2 + "prev_hash does not match the previous entry's hash"]),
    "hash": ("f" * 64, [AT_SEQ_2 + "hash does not match the entry's content"]),
    "data": (None, [AT_SEQ_2 + "hash does not match the entry's content"]),  # from the entry
}
"""Each stored field of the victim's seq 2 (reserved, attempt 1, occurred 09:00, recorded 09:01),
an edit of it, and the lines ``jobtrail verify`` must print after it."""


def _verify_names(env: dict[str, str], lines: list[str], job: str = VICTIM) -> None:
    """``jobtrail verify`` (whole log, then ``--job``) exits 1 printing each of ``lines``, and
    ``verify-range`` over the day prints the same."""
    whole = jobtrail(env, "verify")
    assert whole.code == 1, whole
    broken = [line for line in whole.out.splitlines() if line.startswith("BROKEN")]
    assert len(broken) == len(lines), whole.out
    for wanted, got in zip(lines, broken, strict=True):
        assert got.startswith(wanted), (wanted, got)
    one = jobtrail(env, "verify", "--job", job)
    assert one.code == 1 and one.out.splitlines()[0].startswith(lines[0]), one
    ranged = jobtrail(env, "verify-range", "--since", DAY, "--until", "2026-11-21")
    assert ranged.code == 1 and ranged.out.splitlines() == broken, ranged


@pytest.mark.parametrize("field", list(FIELD_EDITS))
def test_an_edit_of_any_stored_field_is_named_by_verify(
    env: dict[str, str], stored: StoredLog, log_url: str, field: str
) -> None:
    asyncio.run(_seed(log_url))
    assert jobtrail(env, "verify").code == 0
    value, lines = FIELD_EDITS[field]
    if field == "data":
        value = stored.get(VICTIM, 2)["data"].replace('"node_id":"node-1"', '"node_id":"node-9"')
    stored.set(VICTIM, 2, {field: value})
    _verify_names(env, lines)


MONGO_EDITS: list[tuple[dict[str, Any], list[str]]] = [
    (
        {"$set": {"note": "approved"}},
        [AT_SEQ_2 + "stored entry has fields the log never writes: note"],
    ),
    ({"$unset": {"type": ""}}, [AT_SEQ_2 + "stored type is missing"]),
    ({"$set": {"attempt": "1"}}, [AT_SEQ_2 + "stored attempt '1' is not an integer"]),
    ({"$set": {"attempt": True}}, [AT_SEQ_2 + "stored attempt True is not an integer"]),
    ({"$set": {"attempt": 1.0}}, [AT_SEQ_2 + "stored attempt 1.0 is not an integer"]),
    (
        {"$set": {"recorded_at": "2026-11-20T09:01:00Z"}},
        [AT_SEQ_2 + "stored recorded_at '2026-11-20T09:01:00Z' is not an instant"],
    ),
    (
        # Paging compares within one BSON type: the edited entry is read after all the others
        # (here just after the victim's, so it joins their chain, broken at the gap already).
        {"$set": {"seq": "2"}},
        [GAP_AT_3],
    ),
]


@pytest.mark.parametrize(("change", "lines"), MONGO_EDITS, ids=lambda v: str(v)[:40])
def test_a_mongodb_document_changed_in_shape_is_named_by_verify(
    mongo_url: str, tmp_path: Path, change: dict[str, Any], lines: list[str]
) -> None:
    env = {
        "JOBTRAIL_LOG_URL": mongo_url,
        "JOBTRAIL_SQL_URL": f"sqlite+aiosqlite:///{tmp_path / 'projections.db'}",
    }
    asyncio.run(_seed(mongo_url))
    client: MongoClient[dict[str, Any]] = MongoClient(mongo_url, tz_aware=True)
    try:
        events = client.get_default_database()["events"]
        assert events.update_one({"job_id": VICTIM, "seq": 2}, change).modified_count == 1
    finally:
        client.close()
    whole = jobtrail(env, "verify")
    assert whole.code == 1, whole
    assert [line for line in whole.out.splitlines() if line.startswith("BROKEN")] == [
        line for line in whole.out.splitlines() if any(line.startswith(x) for x in lines)
    ]
    for wanted in lines:
        assert any(line.startswith(wanted) for line in whole.out.splitlines()), (wanted, whole)


SQLITE_EDITS = [
    ("attempt", "one", "stored attempt 'one' is not an integer"),
    ("occurred_at", "garbage", "stored occurred_at 'garbage' is not an instant"),
    # The same instant spelled otherwise: SQLite compares the text, so time-range queries
    # (as-of, replay windows, anchors) would place the entry elsewhere.
    (
        "recorded_at",
        "2026-11-20T09:01:00.000000",
        "stored recorded_at '2026-11-20T09:01:00.000000'",
    ),
]


@pytest.mark.parametrize(("field", "text", "reason"), SQLITE_EDITS)
def test_a_sqlite_value_of_another_type_or_form_is_named_by_verify(
    sqlite_url: str, tmp_path: Path, field: str, text: str, reason: str
) -> None:
    env = {
        "JOBTRAIL_LOG_URL": sqlite_url,
        "JOBTRAIL_SQL_URL": f"sqlite+aiosqlite:///{tmp_path / 'projections.db'}",
    }
    asyncio.run(_seed(sqlite_url))
    with closing(sqlite3.connect(sqlite_url.split("///", 1)[1])) as db:
        db.execute(
            f"UPDATE jobtrail_events SET {field} = ? WHERE job_id = ? AND seq = 2",
            (text, VICTIM),
        )
        db.commit()
    _verify_names(env, [AT_SEQ_2 + reason])


def test_a_day_with_a_broken_chain_is_not_anchored(
    env: dict[str, str], stored: StoredLog, log_url: str
) -> None:
    asyncio.run(_seed(log_url))
    alter_data(stored)
    refused = jobtrail(env, "anchor", "--day", DAY)
    assert refused.code == 1
    assert refused.out == f"BROKEN {VICTIM} at seq 2: hash does not match the entry's content\n"
    assert refused.err == f"jobtrail: not anchoring {DAY}: 1 broken chain(s) among the day's jobs\n"
    assert jobtrail(env, "verify-anchors").err.startswith("verified 0 anchored days")


def test_a_second_different_anchor_for_a_day_is_refused_and_the_first_kept(
    env: dict[str, str], stored: StoredLog, log_url: str
) -> None:
    asyncio.run(_seed(log_url))
    first = jobtrail(env, "anchor", "--day", DAY, "--json")
    assert first.code == 0
    delete_last(stored)
    again = jobtrail(env, "anchor", "--day", DAY)
    assert again.code == 1
    assert again.out.startswith(f"CHANGED {DAY}: root ")
    assert "10 entries anchored, 9 now (-1)" in again.out
    listed = jobtrail(env, "anchor", "--day", DAY, "--json")
    assert listed.code == 1
    assert {k: v for k, v in json.loads(listed.out).items() if k in {"root", "count"}} == {
        k: v for k, v in json.loads(first.out).items() if k in {"root", "count"}
    }


def test_fleet_on_an_undecodable_entry_is_one_line(
    env: dict[str, str], stored: StoredLog, log_url: str
) -> None:
    asyncio.run(_seed(log_url))
    stored.set(VICTIM, 3, {"data": '{"not": "an event"}'})
    result = jobtrail(env, "fleet", "--at", "2026-11-21T00:00:00Z")
    assert result.code == 2
    assert result.err == (
        f"jobtrail: entry {VICTIM} seq 3 is not a valid event: the log was altered "
        "(run jobtrail verify)\n"
    )


# --- bad arguments: one line on standard error, through the real entry point -------------------


def _main(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("JOBTRAIL_")} | env
    code = "import app.entrypoints.audit_cli; from app.entrypoints.cli import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        env=environ | {"PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


BAD_ARGUMENTS = [
    (
        ["asof", "job-1", "--at", "yesterday"],
        2,
        "Invalid value for '--at': 'yesterday' is not an ISO-8601 instant",
    ),
    (
        ["asof", "job-1", "--at", "2026-11-20T10:00:00Z"],
        2,
        "no events recorded for job 'job-1' by 2026-11-20T10:00:00+00:00",
    ),
    (["asof", "bad id!", "--at", "2026-11-20T10:00:00Z"], 2, "Invalid value for 'job_id'"),
    (["asof", "job-1"], 2, "Missing option '--at'."),
    (["fleet", "--at", "2026-11-20T10:00:00"], 2, "has no UTC offset: add Z or +HH:MM"),
    (
        ["fleet", "--at", "2026-11-20T10:00:00Z", "--by", "color"],
        2,
        "Invalid value for '--by': 'color' is not one of 'pool', 'tenant', 'model'.",
    ),
    (
        ["fleet", "--at", "2026-11-20T10:00:00Z", "--status", "sleeping"],
        2,
        "Invalid value for '--status'",
    ),
    (
        ["verify-range", "--since", "2026-11-21", "--until", "2026-11-20"],
        2,
        "since (2026-11-21T00:00:00+00:00) must be before until (2026-11-20T00:00:00+00:00)",
    ),
    (
        ["verify-range", "--since", "soon", "--until", "2026-11-20"],
        2,
        "Invalid value for '--since'",
    ),
    (
        ["anchor", "--day", "2026-13-01"],
        2,
        "Invalid value for '--day': '2026-13-01' is not a day (YYYY-MM-DD)",
    ),
    (["anchor", "--day", "2026-11-20T00:00:00Z"], 2, "is not a day (YYYY-MM-DD)"),
    (
        ["anchor", "--day", "2999-01-01"],
        2,
        "day 2999-01-01 is not over yet: anchor it after 2999-01-02T00:10Z",
    ),
    (["verify-anchors", "--since", "last week"], 2, "Invalid value for '--since'"),
]


def test_bad_arguments_are_one_line_and_exit_2(tmp_path: Path) -> None:
    env = {
        "JOBTRAIL_LOG_URL": f"sqlite+aiosqlite:///{tmp_path / 'log.db'}",
        "JOBTRAIL_SQL_URL": f"sqlite+aiosqlite:///{tmp_path / 'p.db'}",
    }
    asyncio.run(_seed(env["JOBTRAIL_LOG_URL"]))
    script = "; ".join("main_once(" + repr(args) + ")" for args, _, _ in BAD_ARGUMENTS)
    # One interpreter runs every case (each through main(), as the console script does).
    code = f"""
import sys
import app.entrypoints.audit_cli
from app.entrypoints.cli import main
def main_once(args):
    sys.argv = ["jobtrail", *args]
    try:
        main()
    except SystemExit as exc:
        print(f"EXIT {{exc.code}}", file=sys.stderr, flush=True)
    sys.stdout.flush()
{script}
"""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("JOBTRAIL_")} | env
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=environ | {"PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 2 * len(BAD_ARGUMENTS), result.stderr
    for (args, code_wanted, message), line, exit_line in zip(
        BAD_ARGUMENTS, lines[::2], lines[1::2], strict=True
    ):
        assert line.startswith("jobtrail: ") and message in line, (args, line)
        assert exit_line == f"EXIT {code_wanted}", (args, line)


def test_an_unreachable_mongodb_is_one_line_and_exit_3(tmp_path: Path) -> None:
    result = _main(
        ["verify-anchors"],
        {
            "JOBTRAIL_LOG_URL": "mongodb://127.0.0.1:1/x?serverSelectionTimeoutMS=300",
            "JOBTRAIL_SQL_URL": f"sqlite+aiosqlite:///{tmp_path / 'p.db'}",
        },
    )
    assert result.returncode == 3, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("jobtrail: MongoDB anchors: read failed")


def test_verify_range_draws_a_progress_bar_on_a_terminal(sqlite_url: str, tmp_path: Path) -> None:
    log_url = sqlite_url
    env = {"JOBTRAIL_LOG_URL": log_url, "JOBTRAIL_SQL_URL": f"sqlite:///{tmp_path / 'p.db'}"}
    asyncio.run(_seed(log_url))
    args = ["verify-range", "--since", DAY, "--until", "2026-11-21"]
    quiet = _main(args, env)
    assert quiet.returncode == 0, quiet.stderr
    assert "\x1b" not in quiet.stderr  # not a terminal: no bar, just the summary
    shown = _main(args, env | {"TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1", "COLUMNS": "100"})
    assert shown.returncode == 0, shown.stderr
    assert "verifying" in shown.stderr and "\x1b" in shown.stderr and "3/3" in shown.stderr
    assert "verified 3 jobs" in shown.stderr


# --- docs/auditor.md: every command example runs here --------------------------------------------

DOCS = ROOT / "docs" / "auditor.md"
DOC_DAY = datetime(2026, 11, 26, tzinfo=UTC)


def _doc_submitted(
    job: str, at: datetime, job_type: str, priority: str, pool: str, tenant: str, model: str
) -> Submitted:
    return Submitted(
        job_type=job_type,
        model=model,
        priority=priority,
        tenant=tenant,
        pool=pool,
        queue=f"jobtrail.work.{pool}.{job_type}",
        payload={"prompt": "..."},
        **_env(job, "submitted", at),
    )


async def seed_docs_log(log_url: str) -> None:
    """The log the auditor's page describes: four jobs around 14:00 UTC on 2026-11-26."""
    log = open_event_log(log_url)
    await log.ensure_schema()
    clock = FixedClockForDocs(DOC_DAY)
    tracker = Tracker(
        log, InMemoryProjectionStore(), load_policy(Settings(policy_file=None)), clock
    )

    async def at(hms: str, *events: JobEvent) -> None:
        h, m, s = (int(x) for x in hms.split(":"))
        clock.at = DOC_DAY.replace(hour=h, minute=m, second=s)
        if events:
            await tracker.record(events)
        await tracker.fire_due_timers()

    def t(hms: str) -> datetime:
        h, m, s = (int(x) for x in hms.split(":"))
        return DOC_DAY.replace(hour=h, minute=m, second=s)

    def node(
        kind: type[Any], job: str, hms: str, node_id: str, attempt: int = 1, **extra: Any
    ) -> Any:
        envelope = _env(job, kind.__name__, t(hms), attempt) | {"source": node_id}
        return kind(node_id=node_id, **envelope, **extra)

    try:
        await at(
            "13:58:00",
            _doc_submitted("job-41", t("13:58:00"), "batch", "bulk", "gpu-a", "acme", "llama-3-8b"),
        )
        await at("13:59:00", node(Reserved, "job-41", "13:59:00", "node-7"))
        await at(
            "14:00:00",
            _doc_submitted("job-42", t("14:00:00"), "sync", "bulk", "gpu-a", "acme", "llama-3-8b"),
        )
        await at("14:00:20", node(Reserved, "job-42", "14:00:20", "node-3"))
        await at(
            "14:01:00",
            node(
                Failed,
                "job-42",
                "14:01:00",
                "node-3",
                error_code="oom",
                error_message="CUDA out of memory",
                retryable=True,
            ),
            _doc_submitted(
                "job-43", t("14:01:00"), "batch", "bulk", "shared", "globex", "mistral-7b"
            ),
        )
        await at("14:01:30", node(Reserved, "job-43", "14:01:30", "node-1"))
        await at(
            "14:01:45",
            _doc_submitted(
                "job-44", t("14:01:45"), "sync", "urgent", "gpu-b", "acme", "llama-3-70b"
            ),
        )
        await at("14:02:30", node(Reserved, "job-42", "14:02:30", "node-5", attempt=2))
        await at("14:03:00", node(Reserved, "job-44", "14:03:00", "node-2"))
        await at(
            "14:03:40",
            node(
                Failed,
                "job-44",
                "14:03:40",
                "node-2",
                error_code="invalid_input",
                error_message="prompt too long",
                retryable=False,
            ),
        )
        await at("14:04:10", node(Completed, "job-42", "14:04:10", "node-5", attempt=2))
        await at("14:05:00", node(Completed, "job-41", "14:05:00", "node-7"))
        await at("14:10:00", node(Completed, "job-43", "14:10:00", "node-1"))
    finally:
        await log.close()


class FixedClockForDocs:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def now(self) -> datetime:
        return self.at


@dataclass
class DocStep:
    command: str
    expected: list[str]
    line: int


def doc_steps(text: str) -> list[DocStep]:
    """The ``$ command`` lines of the page's console blocks, each with the output shown after it."""
    steps: list[DocStep] = []
    in_console = False
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip() in {"```console", "```"}:
            in_console = line.strip() == "```console"
        elif in_console and line.startswith("$ "):
            steps.append(DocStep(line[2:], [], number))
        elif in_console:
            steps[-1].expected.append(line)
    return steps


def shown_as(expected: str, actual: str) -> bool:
    """Whether ``actual`` is the line the page shows, where ``...`` stands for any text."""
    pattern = ".*".join(re.escape(part) for part in expected.rstrip().split("..."))
    return re.fullmatch(pattern, actual.rstrip()) is not None


def test_every_command_on_the_auditors_page_runs_as_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the embedded defaults: var/jobtrail-log.db
    (tmp_path / "var").mkdir()
    asyncio.run(seed_docs_log("sqlite+aiosqlite:///var/jobtrail-log.db"))
    steps = doc_steps(DOCS.read_text())
    assert len(steps) >= 20
    last_code = 0
    for step in steps:
        argv = shlex.split(step.command)
        where = f"docs/auditor.md:{step.line}: $ {step.command}"
        if argv[0] == "jobtrail":
            result = jobtrail({}, *argv[1:])
            output, last_code = result.out + result.err, result.code
        elif argv[0] == "sqlite3":
            with closing(sqlite3.connect(argv[1])) as db:
                db.execute(argv[2])
                db.commit()
            output, last_code = "", 0
        elif argv == ["echo", "$?"]:
            output = f"{last_code}\n"
        else:
            pytest.fail(f"{where}: the test does not know how to run this")
        lines = output.splitlines()
        assert len(lines) == len(step.expected), f"{where}\n{output}"
        for wanted, got in zip(step.expected, lines, strict=True):
            assert shown_as(wanted, got), f"{where}\nwanted: {wanted}\ngot:    {got}"


@pytest.mark.parametrize(
    ("wanted", "got", "same"),
    [
        ("a ... b", "a xyz b", True),
        ("a ... b", "a b", False),
        ("{(x)} [y]", "{(x)} [y]", True),
        ("{(x)} [y]", "{(x)} [z]", False),
        ("node_id  ", "node_id", True),
    ],
)
def test_the_page_matcher_is_literal_but_for_ellipses(wanted: str, got: str, same: bool) -> None:
    assert shown_as(wanted, got) is same


def test_fleet_json_lists_the_job_ids_of_each_group(env: dict[str, str], log_url: str) -> None:
    asyncio.run(_seed(log_url))
    result = jobtrail(
        env,
        "fleet",
        "--at",
        "2026-11-20T09:06:00Z",
        "--status",
        "reserved",
        "--by",
        "model",
        "--list",
        "--json",
    )
    assert result.code == 0, result
    assert json.loads(result.out) == {
        "at": "2026-11-20T09:06:00+00:00",
        "status": "reserved",
        "by": "model",
        "total": 2,
        "groups": [
            {
                "key": "llama-3-8b",
                "status": "reserved",
                "count": 2,
                "job_ids": ["bystander-1", "bystander-2"],
            }
        ],
    }

"""The analysts' services on in-memory fakes: failure analysis, rebuild, replay and export formats.

The history is the one of tests/unit/test_whatif.py, produced by the real ``Tracker`` service.
"""

from __future__ import annotations

import csv
import io
import json
import random
from collections.abc import AsyncIterator, Sequence
from dataclasses import fields, replace
from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from rich.console import Console

from app.adapters.export_formats import (
    failure_tables,
    html_report,
    open_writer,
    whatif_tables,
)
from app.adapters.memory_log import InMemoryEventLog
from app.adapters.memory_store import InMemoryProjectionStore
from app.domain.events import Submitted
from app.domain.machine import fold
from app.domain.policy import Policy, rules_key
from app.domain.state import JobSpec
from app.entrypoints.shapes import flat_event
from app.ports import Column, JobBundle, ProjectionUpdate, Side
from app.services.analysis import Quantiles, Window, analyze
from app.services.export import EVENT_COLUMNS, JOB_COLUMNS, Selection, replay
from app.services.rebuild import RebuildReport, rebuild
from app.services.whatif import whatif
from tests.unit.factories import TEST_POLICY_TOML, record_all, submitted_events
from tests.unit.test_whatif import END, LIVE, at, real_history

FAR = datetime(2100, 1, 1).astimezone()


@pytest.fixture(scope="module")
async def stores() -> tuple[InMemoryEventLog, InMemoryProjectionStore]:
    log, store = InMemoryEventLog(), InMemoryProjectionStore()
    await real_history(log, store)
    return log, store


@pytest.fixture(scope="module")
async def report(stores: tuple[InMemoryEventLog, InMemoryProjectionStore]) -> dict[str, Any]:
    return (await analyze(stores[0], LIVE)).as_dict()


# --- analyze -----------------------------------------------------------------------------------


def test_rates_by_node_count_every_ended_attempt_once(report: dict[str, Any]) -> None:
    assert report["overall"] == {
        "attempts": 15,
        "completed": 6,
        "failed": 7,
        "lease_expired": 2,
        "retried": 4,
        "failure_rate": 0.6,
        "retry_rate": 0.2667,
    }
    nodes = report["by"]["node"]
    assert {n: (g["attempts"], g["completed"], g["retried"]) for n, g in nodes.items()} == {
        "n1": (6, 4, 0),
        "n2": (4, 1, 2),
        "n3": (2, 0, 1),
        "n4": (2, 0, 1),
        "n5": (1, 1, 0),
    }
    assert list(nodes)[:2] == ["n2", "n1"]  # the most failures first (n2: 3, n1: 2)
    assert nodes["n4"]["lease_expired"] == 2


def test_rates_by_pool_model_and_queue(report: dict[str, Any]) -> None:
    assert report["by"]["pool"]["flaky"] == {
        "attempts": 1,
        "completed": 0,
        "failed": 1,
        "lease_expired": 0,
        "retried": 1,
        "failure_rate": 1.0,
        "retry_rate": 1.0,
    }
    assert report["by"]["pool"]["steady"]["attempts"] == 14
    assert report["by"]["model"]["m-large"]["attempts"] == 2
    assert report["by"]["model"]["m-large"]["failure_rate"] == 0.5
    queues = report["by"]["queue"]
    assert queues["jobtrail.work.steady.sync"]["completed"] == 1  # where the reroute sent it
    assert queues["work.flaky"]["failed"] == 1


def test_error_codes_say_what_followed(report: dict[str, Any]) -> None:
    errors = {
        code: (e["failures"], e["retried"], e["dead_lettered"])
        for code, e in report["errors"].items()
    }
    assert errors == {
        "invalid_input": (2, 0, 2),
        "lease_expired": (2, 1, 1),
        "oom": (2, 1, 0),
        "timeout": (2, 1, 1),
        "cuda_error": (1, 1, 0),
    }
    assert report["errors"]["cuda_error"]["share"] == round(1 / 9, 4)


def test_completion_times_attempts_dead_letters_expiries_anomalies(report: dict[str, Any]) -> None:
    per_job = report["attempts_per_completed_job"]
    assert per_job == {"jobs": 6, "mean": 1.667, "histogram": {"1": 2, "2": 4}}
    times = report["time_to_completion_seconds"]  # 0, 5, 45, 50, 150, 220 seconds
    assert times["count"] == 6 and times["min"] == 0 and times["max"] == 220
    assert times["mean"] == pytest.approx(470 / 6, abs=0.001)
    assert (times["p50"], times["p90"], times["p99"]) == (45, 150, 150)  # exact when few
    assert report["dead_letter_reasons"] == {
        "non_retryable": 2,
        "retries_exhausted": 2,
        "poison": 1,
    }
    assert report["lease_expiries_by_job_type"] == {"sync": 2}
    assert report["ttl_expiries_by_job_type"] == {"sync": 1}
    assert report["anomalies"] == {"stale_attempt": 1}
    assert report["jobs"] == 12
    assert report["events"] == sum(report["event_types"].values())


async def test_only_events_in_the_window_count(
    stores: tuple[InMemoryEventLog, InMemoryProjectionStore],
) -> None:
    late = (await analyze(stores[0], LIVE, Window(since=at(100)))).as_dict()
    assert late["jobs"] == 4  # lease-1, ttl-1 (expired at 120 s), redrive-1 and same-batch
    assert late["overall"]["attempts"] == late["overall"]["completed"] == 3
    assert late["anomalies"] == {}
    assert late["window"]["since"] == at(100).isoformat()
    early = (await analyze(stores[0], LIVE, Window(until=at(1)))).as_dict()
    assert early["event_types"] == {"submitted": 11}
    assert early["overall"]["attempts"] == 0 and early["overall"]["failure_rate"] == 0


def test_quantiles_stay_within_their_accuracy() -> None:
    rng = random.Random(7)
    values = [rng.lognormvariate(3, 1.5) for _ in range(20_000)]
    sketch = Quantiles()
    for value in values:
        sketch.add(value)
    ordered = sorted(values)
    for q in (0.5, 0.9, 0.99):
        exact = ordered[int(q * (len(ordered) - 1))]
        assert sketch.quantile(q) == pytest.approx(exact, rel=0.01)
    assert Quantiles().quantile(0.5) is None
    small = Quantiles(exact_up_to=3)
    for value in (0.0, 1.0, 2.0, 1000.0):  # past 3 values only the sketch answers
        small.add(value)
    assert small.quantile(0) == 0 and small.quantile(0.5) == pytest.approx(1, rel=0.01)
    assert small.quantile(1) == 1000
    assert Quantiles().summary()["p99"] is None


# --- rebuild -----------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(submitted_events())
def test_the_policy_memo_resolves_every_job_as_a_fresh_policy_does(event: Submitted) -> None:
    policy = Policy.from_toml(TEST_POLICY_TOML)
    spec = fold(record_all([event])).spec
    assert spec is not None
    first = policy.for_job(spec)
    assert policy.for_job(spec) is first  # remembered
    assert first == Policy.from_toml(TEST_POLICY_TOML)._resolve(spec)


def test_the_rules_key_names_every_spec_field_the_policy_reads() -> None:
    # A new JobSpec field must be added to rules_key (or here, if the policy never reads it).
    unread = {"model", "tenant", "queue", "payload_json"}
    assert {f.name for f in fields(JobSpec)} - unread == {
        "job_type",
        "priority",
        "pool",
        "max_attempts",
        "ttl_seconds",
        "lease_seconds",
        "retry",
        "fallback_pools",
        "reroute_after_failures",
    }
    spec = JobSpec("sync", "m", "urgent", "t", "p", "q", "{}")  # type: ignore[arg-type]
    assert len(rules_key(spec)) == 9


class MemoryTarget:
    """RebuildTarget in dictionaries: ``live`` and ``fresh`` bundles by job_id."""

    def __init__(self, live: dict[str, JobBundle]) -> None:
        self.live = live
        self.fresh: dict[str, JobBundle] | None = None
        self.previous: dict[str, JobBundle] | None = None
        self.fail_writes = False
        self.writes = 0

    async def prepare(self) -> None:
        self.fresh = {}

    async def write(self, updates: Sequence[ProjectionUpdate]) -> None:
        if self.fail_writes:
            raise RuntimeError("disk full")
        assert self.fresh is not None
        self.writes += 1
        for u in updates:
            self.fresh[u.job.job_id] = JobBundle(u.job.job_id, u.job, tuple(u.attempts), u.timer)

    async def bundles(self, side: Side) -> AsyncIterator[JobBundle]:
        rows = self.live if side is Side.LIVE else self.fresh
        assert rows is not None
        for job_id in sorted(rows):
            yield rows[job_id]

    async def same_rows(self) -> bool:
        return self.live == self.fresh

    async def swap(self) -> None:
        assert self.fresh is not None
        self.previous, self.live, self.fresh = self.live, self.fresh, None

    async def discard(self) -> None:
        self.fresh = None


async def live_bundles(store: InMemoryProjectionStore) -> dict[str, JobBundle]:
    timers = {t.job_id: t for t in await store.due_timers(FAR, 10_000)}
    bundles = {}
    async for row in store.all_jobs():
        attempts = tuple(await store.get_attempts(row.job_id))
        bundles[row.job_id] = JobBundle(row.job_id, row, attempts, timers.get(row.job_id))
    return bundles


async def test_a_rebuild_equal_to_the_live_projection_swaps(
    stores: tuple[InMemoryEventLog, InMemoryProjectionStore],
) -> None:
    log, store = stores
    target = MemoryTarget(await live_bundles(store))
    seen: list[int] = []
    result = await rebuild(log, target, LIVE, batch_jobs=2, progress=seen.append)
    assert (result.jobs_rebuilt, result.identical, result.different) == (12, 12, 0)
    assert result.events == sum(seen) == await log.count()
    assert result.swapped and target.previous is not None and target.fresh is None
    assert target.live == target.previous
    assert target.writes == 6


async def test_a_different_row_is_named_and_blocks_the_swap(
    stores: tuple[InMemoryEventLog, InMemoryProjectionStore],
) -> None:
    log, store = stores
    live = await live_bundles(store)
    bad = live["retry-1"]
    live["retry-1"] = replace(bad, job=replace(bad.job, status="queued"))  # type: ignore[type-var]
    del live["ok-1"]
    target = MemoryTarget(dict(live))
    result = await rebuild(log, target, LIVE)
    assert (result.identical, result.different, result.live_jobs) == (10, 2, 11)
    assert [(d.job_id, d.changes[0][0]) for d in result.first_differences] == [
        ("ok-1", "job"),
        ("retry-1", "jobs.status"),
    ]
    assert result.first_differences[1].changes[0][1:] == ("'queued'", "'completed'")
    assert not result.swapped and target.live == live and target.fresh is None
    forced = await rebuild(log, target, LIVE, force=True)
    assert forced.swapped and target.live["retry-1"].job.status == "completed"  # type: ignore[union-attr]


async def test_dry_runs_and_refusals_never_swap(
    stores: tuple[InMemoryEventLog, InMemoryProjectionStore],
) -> None:
    log, store = stores
    target = MemoryTarget(await live_bundles(store))
    assert not (await rebuild(log, target, LIVE, dry_run=True)).swapped
    asked: list[RebuildReport] = []

    def refuse(report: RebuildReport) -> bool:
        asked.append(report)
        return False

    result = await rebuild(log, target, LIVE, confirm=refuse)
    assert asked == [result] and not result.swapped and target.previous is None
    assert (await rebuild(log, target, LIVE, confirm=lambda _: True)).swapped


async def test_a_failed_build_drops_the_fresh_tables(
    stores: tuple[InMemoryEventLog, InMemoryProjectionStore],
) -> None:
    target = MemoryTarget({})
    target.fail_writes = True
    with pytest.raises(RuntimeError, match="disk full"):
        await rebuild(stores[0], target, LIVE)
    assert target.fresh is None and target.live == {}


# --- replay and export -------------------------------------------------------------------------


async def test_replay_orders_by_recorded_time(
    stores: tuple[InMemoryEventLog, InMemoryProjectionStore],
) -> None:
    log = stores[0]
    everything = [r async for r in log.scan()]
    expected = sorted(everything, key=lambda r: (r.recorded_at, r.job_id, r.seq))
    got = [r async for r in replay(log, Selection(Window()))]
    assert got == expected
    window = Window(at(2), at(40))
    typed = Selection(window, types=frozenset({"failed", "retried"}))
    got = [r async for r in replay(log, typed)]
    assert got == [
        r for r in expected if at(2) <= r.recorded_at < at(40) and r.event.type in typed.types
    ]
    assert len(got) == 9
    one = [r async for r in replay(log, Selection(Window(until=at(END)), job_id="lease-1"))]
    assert one == [r for r in expected if r.job_id == "lease-1"]


async def test_the_event_columns_cover_every_flat_event_field(
    stores: tuple[InMemoryEventLog, InMemoryProjectionStore],
) -> None:
    names = {c.name for c in EVENT_COLUMNS}
    async for recorded in stores[0].scan():
        assert set(flat_event(recorded)) <= names
    kinds = {c.name: c.kind for c in EVENT_COLUMNS}
    assert (kinds["recorded_at"], kinds["payload"], kinds["retryable"]) == ("time", "json", "bool")
    assert {c.name: c.kind for c in JOB_COLUMNS}["updated_at"] == "time"
    assert {c.name: c.kind for c in JOB_COLUMNS}["attempt"] == "int"


COLUMNS = [Column("n", "int"), Column("at", "time"), Column("doc", "json"), Column("ok", "bool")]
ROWS: list[dict[str, Any]] = [
    {"n": 1, "at": "2026-03-02T08:00:00Z", "doc": {"a": [1, "é"]}, "ok": True},
    {"n": 2, "at": None, "doc": None, "ok": False},
]


def test_jsonl_and_csv_writers() -> None:
    out = io.BytesIO()
    writer = open_writer("jsonl", out, COLUMNS)
    writer.write(ROWS)
    writer.close()
    assert [json.loads(line) for line in out.getvalue().splitlines()] == ROWS
    out = io.BytesIO()
    writer = open_writer("csv", out, COLUMNS)
    writer.write(ROWS[:1])
    writer.write(ROWS[1:])
    writer.close()
    assert not out.closed
    assert list(csv.reader(io.StringIO(out.getvalue().decode()))) == [
        ["n", "at", "doc", "ok"],
        ["1", "2026-03-02T08:00:00Z", '{"a":[1,"é"]}', "true"],
        ["2", "", "", "false"],
    ]
    with pytest.raises(ValueError, match="unknown format 'xml'"):
        open_writer("xml", out, COLUMNS)


def test_the_parquet_writer_writes_one_typed_row_group_per_batch() -> None:
    import pyarrow.parquet as pq  # type: ignore[import-untyped]

    out = io.BytesIO()
    writer = open_writer("parquet", out, COLUMNS)
    writer.write(ROWS[:1])
    writer.write([])
    writer.write(ROWS[1:])
    writer.close()
    parquet = pq.ParquetFile(io.BytesIO(out.getvalue()))
    assert parquet.metadata.num_row_groups == 2
    rows = parquet.read().to_pylist()
    assert rows[0]["at"] == at(0) and rows[0]["doc"] == '{"a":[1,"é"]}' and rows[0]["ok"] is True
    assert rows[1] == {"n": 2, "at": None, "doc": None, "ok": False}


def test_the_html_report_is_self_contained(report: dict[str, Any]) -> None:
    page = html_report(report)
    assert page.startswith("<!doctype html>") and page.count("<svg") >= 10
    assert "<script" not in page and "http://" not in page and "https://" not in page
    assert "Failure rate by node" in page and "n2" in page and "lease_expired" in page
    hostile = json.loads(json.dumps(report))
    hostile["by"]["node"] = {"<b>x</b>": hostile["by"]["node"]["n1"]}
    assert "<b>x</b>" not in html_report(hostile) and "&lt;b&gt;x&lt;/b&gt;" in html_report(hostile)


def test_producer_text_in_the_html_report_comes_out_escaped(report: dict[str, Any]) -> None:
    hostile = json.loads(json.dumps(report))
    evil = '<script>alert("x")</script>'
    hostile["by"]["node"] = {evil: hostile["by"]["node"]["n1"]}
    hostile["errors"] = {f"{evil}-code": next(iter(report["errors"].values()))}
    hostile["dead_letter_reasons"] = {f"{evil}-reason": 1}
    hostile["lease_expiries_by_job_type"] = {f"{evil}-type": 2}
    page = html_report(hostile)
    assert "<script" not in page
    escaped = "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;"
    for suffix in ("", "-code", "-reason", "-type"):
        assert f"<title>{escaped}{suffix}</title>" in page


async def test_the_reports_render_as_tables(
    report: dict[str, Any], stores: tuple[InMemoryEventLog, InMemoryProjectionStore]
) -> None:
    console = Console(record=True, width=140)
    console.print(*failure_tables(report))
    text = console.export_text()
    assert "By node" in text and "60.0%" in text and "stale_attempt" in text
    strict = LIVE.from_toml("[defaults]\nmax_attempts = 1\n")
    what = (await whatif(stores[0], LIVE, strict, at(END) + timedelta(hours=1))).as_dict()
    console.print(*whatif_tables(what, "strict.toml"))
    text = console.export_text()
    assert "under strict.toml" in text and "dead-lettered" in text
    assert "jobs would have been decided differently" in text

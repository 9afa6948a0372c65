"""Run every scenario several times, report medians with min and max, as ratios to baselines."""

from __future__ import annotations

import json
import platform
import statistics
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from app.adapters.log_factory import open_event_log
from app.bench.databases import mongo_database, scratch_postgres, secantus_server
from app.bench.long_history import HISTORY_JOBS, long_history_rates
from app.bench.offline import (
    fill_log,
    fill_log_in_slices,
    in_memory_fold_rate,
    pad_jobs,
    peak_rss_mb,
    read_latencies,
    rebuild_rate,
    rebuild_workload,
    timer_lag,
)
from app.bench.rabbit_setup import scratch_vhost
from app.bench.scenarios import (
    bare_consume_rate,
    encoded,
    jobtrail_ingest_rate,
    serve_processes_ingest_rate,
)
from app.bench.workload import lifecycle_events
from app.bootstrap import prepare_storage
from app.bootstrap.hosting import ApiServer
from app.domain.policy import Policy
from app.settings import Settings


@dataclass
class BenchOptions:
    """What to run and against which servers."""

    rabbit_url: str
    rabbit_api: str
    pg_admin_url: str
    secantus: Path | None
    events: int = 20_000
    runs: int = 3
    rebuild_events: int = 100_000
    timer_jobs: int = 2_000
    requests: int = 2_000
    read_jobs: int = 0
    """Pad the projection to this many jobs (synthetic rows) before the read figures."""
    memory_events: int = 0
    """Measure memory once over a log of its own of this many events (0: the rebuild log)."""
    trackers: int = 2
    """Also measure ingestion by 1 and by this many ``jobtrail serve`` processes (0: skip)."""
    history_events: int = 10_000
    """Events each job of the long-history scenario holds before it is measured (0: skip)."""
    history_count: int = 2_000
    """Events ingested for the long-history jobs, and for new jobs as its baseline."""


@dataclass
class Figure:
    """One measured figure: every run's value, and its ratio to the baseline of the same run."""

    name: str
    unit: str
    values: list[float] = field(default_factory=list)
    baseline: str | None = None
    ratios: list[float] = field(default_factory=list)
    target: float | None = None
    """A ratio to reach (at least), or with ``at_most`` a value not to exceed."""
    at_most: bool = False
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def ratio(self) -> float | None:
        return statistics.median(self.ratios) if self.ratios else None

    @property
    def target_text(self) -> str:
        if self.target is None:
            return ""
        return f"≤ {self.target:g} {self.unit}" if self.at_most else f"ratio ≥ {self.target:g}"

    @property
    def meets(self) -> bool | None:
        if self.target is None:
            return None
        if self.at_most:
            return self.median <= self.target
        return self.ratio is not None and self.ratio >= self.target


@asynccontextmanager
async def _ingest_env(options: BenchOptions, log: str) -> AsyncIterator[Settings]:
    async with AsyncExitStack() as stack:
        vhost = await stack.enter_async_context(
            scratch_vhost(options.rabbit_url, options.rabbit_api)
        )
        sql = await stack.enter_async_context(scratch_postgres(options.pg_admin_url))
        log_url = sql if log == "postgres" else mongo_database(log)
        yield Settings(
            rabbit_url=vhost, log_url=log_url, sql_url=sql, prefetch=1024, batch_size=1000
        )


async def run_bench(
    options: BenchOptions, progress: Callable[[str], None], *, serve: ApiServer
) -> list[Figure]:
    """All scenarios, ``options.runs`` times, interleaved so that machine noise hits all alike;
    ``serve`` runs the API of the read-latency figures."""
    baseline = Figure("bare aio-pika consume+ack (quorum, prefetch 256)", "msg/s")
    pg = Figure(
        "ingest end to end, PostgreSQL log + projections",
        "events/s",
        baseline=baseline.name,
        target=0.5,
    )
    mongo = Figure(
        "ingest end to end, SecantusDB log (not mongod) + PostgreSQL",
        "events/s",
        baseline=baseline.name,
    )
    served = _served_figures(options, baseline.name)
    async with AsyncExitStack() as stack:
        secantus = None
        if options.secantus is not None:
            secantus = await stack.enter_async_context(secantus_server(options.secantus))
        for run in range(options.runs):
            events = lifecycle_events(options.events, run=f"r{run}")
            async with scratch_vhost(options.rabbit_url, options.rabbit_api) as vhost:
                progress(f"run {run + 1}: baseline")
                base = await bare_consume_rate(vhost, encoded(events))
            baseline.values.append(base)
            for figure, log in ((pg, "postgres"), (mongo, secantus)):
                if log is None:
                    continue
                progress(f"run {run + 1}: {figure.name}")
                async with _ingest_env(options, log) as settings:
                    rate = await jobtrail_ingest_rate(settings, events)
                figure.values.append(rate)
                figure.ratios.append(rate / base)
            for figure, processes, workers in served:
                progress(f"run {run + 1}: {processes} serve process(es) of {workers} worker(s)")
                async with _ingest_env(options, "postgres") as settings:
                    rate = await serve_processes_ingest_rate(
                        settings, events, processes, workers=workers
                    )
                figure.values.append(rate)
                figure.ratios.append(rate / base)
    offline = await _offline_figures(options, progress, serve)
    history = await _history_figures(options, progress) if options.history_events else []
    figures = (baseline, pg, *(figure for figure, _, _ in served), mongo, *offline, *history)
    return [f for f in figures if f.values]


def _served_figures(options: BenchOptions, baseline: str) -> list[tuple[Figure, int, int]]:
    """The ``jobtrail serve`` figures with their processes and workers per process: 1 and
    ``trackers`` processes of one tracker each, then one ``serve --workers <trackers>``."""
    if not options.trackers:
        return []
    served = [
        (
            Figure(
                f"ingest, {n} `jobtrail serve` process{'es' if n > 1 else ''} sharing the "
                "partitions, PostgreSQL (sustained)",
                "events/s",
                baseline=baseline,
                target=0.5,
            ),
            n,
            1,
        )
        for n in sorted({1, options.trackers})
    ]
    if options.trackers > 1:
        name = f"ingest, 1 `jobtrail serve --workers {options.trackers}` process, PostgreSQL"
        supervised = Figure(f"{name} (sustained)", "events/s", baseline=baseline, target=0.6)
        served.append((supervised, 1, options.trackers))
    return served


async def _history_figures(options: BenchOptions, progress: Callable[[str], None]) -> list[Figure]:
    """Events for jobs that hold a long history, against as many events for new jobs."""
    fresh = Figure(
        f"ingest, {options.history_count:,} events of {HISTORY_JOBS} new jobs, PostgreSQL",
        "events/s",
    )
    old = Figure(
        f"ingest, {options.history_count:,} heartbeats of {HISTORY_JOBS} jobs holding "
        f"{options.history_events:,} events each, PostgreSQL",
        "events/s",
        baseline=fresh.name,
        target=0.8,
    )
    rabbit = (options.rabbit_url, options.rabbit_api)
    for run in range(options.runs):
        new_rate, old_rate = await long_history_rates(
            rabbit,
            options.pg_admin_url,
            options.history_events,
            options.history_count,
            run,
            progress,
        )
        fresh.values.append(new_rate)
        old.values.append(old_rate)
        old.ratios.append(old_rate / new_rate)
    return [fresh, old]


async def _offline_figures(
    options: BenchOptions, progress: Callable[[str], None], serve: ApiServer
) -> list[Figure]:
    """Rebuild against the in-memory fold, API read latency and timer lag, once per run."""
    fold_rate = Figure("decode stored JSON + fold, in memory", "events/s")
    rebuilt = Figure(
        f"rebuild (replay + row-by-row proof), PostgreSQL, {options.rebuild_events:,} events",
        "events/s",
        baseline=fold_rate.name,
        target=0.3,
    )
    get_p99 = Figure("GET /jobs/{id} p99 over HTTP", "ms", target=5, at_most=True)
    list_p99 = Figure("filtered list page p99 over HTTP", "ms", target=20, at_most=True)
    memory = Figure(
        "peak RSS of export / replay / verify over "
        f"{options.memory_events or options.rebuild_events:,} events (largest)",
        "MB",
        target=300,
        at_most=True,
    )
    lag_p99 = Figure(
        f"lease-expiry detection lag p99, {options.timer_jobs:,} live jobs",
        "s",
        target=1,
        at_most=True,
    )
    retry_p99 = Figure(
        f"retry republish lateness p99 (past its cooldown), {options.timer_jobs:,} live jobs",
        "s",
        target=0.25,
        at_most=True,
    )
    policy = Policy.from_toml(DEFAULT_POLICY)
    for run in range(options.runs):
        async with scratch_postgres(options.pg_admin_url) as sql:
            settings = Settings(rabbit_url=options.rabbit_url, log_url=sql, sql_url=sql)
            await prepare_storage(settings)
            progress(f"run {run + 1}: filling a log of {options.rebuild_events:,} events")
            log = open_event_log(sql)
            await fill_log(log, rebuild_workload(options.rebuild_events))
            base = await in_memory_fold_rate(log)
            await log.close()
            fold_rate.values.append(base)
            progress(f"run {run + 1}: rebuild")
            rate = await rebuild_rate(settings, policy, options.rebuild_events)
            rebuilt.values.append(rate)
            rebuilt.ratios.append(rate / base)
            if not options.memory_events:
                progress(f"run {run + 1}: memory of export, replay, verify")
                memory.values.append(await _peak_rss_of_readers(settings))
            if options.read_jobs:
                progress(f"run {run + 1}: padding the projection to {options.read_jobs:,} jobs")
                await pad_jobs(settings, options.read_jobs)
            progress(f"run {run + 1}: read latency")
            reads = await read_latencies(settings, policy, options.requests, serve)
            get_p99.values.append(reads["get_p99"])
            list_p99.values.append(reads["list_p99"])
            for figure in (get_p99, list_p99):
                figure.name = f"{figure.name.split(',')[0]}, {int(reads['jobs']):,} jobs"
        async with scratch_postgres(options.pg_admin_url) as sql:
            settings = Settings(rabbit_url=options.rabbit_url, log_url=sql, sql_url=sql)
            progress(f"run {run + 1}: timer lag")
            async with scratch_vhost(options.rabbit_url, options.rabbit_api) as vhost:
                timers = await timer_lag(
                    settings.model_copy(update={"rabbit_url": vhost}), policy, options.timer_jobs
                )
            lag_p99.values.append(timers["p99"])
            retry_p99.values.append(timers["retry_p99"])
    if options.memory_events:
        async with scratch_postgres(options.pg_admin_url) as sql:
            settings = Settings(rabbit_url=options.rabbit_url, log_url=sql, sql_url=sql)
            await prepare_storage(settings)
            progress(f"filling a log of {options.memory_events:,} events for the memory figure")
            log = open_event_log(sql)
            await fill_log_in_slices(log, options.memory_events)
            await log.close()
            progress("memory of export, replay, verify")
            memory.values.append(await _peak_rss_of_readers(settings))
    return [fold_rate, rebuilt, memory, get_p99, list_p99, lag_p99, retry_p99]


async def _peak_rss_of_readers(settings: Settings) -> float:
    """The largest peak RSS (MB) of ``export``, ``replay`` and ``verify`` over the whole log."""
    commands = (
        ["export", "--format", "jsonl", "--output", "/dev/null"],
        ["replay", "--from", "2000-01-01T00:00:00Z", "--to", "2100-01-01T00:00:00Z"],
        ["verify"],
    )
    return max([await peak_rss_mb(settings, c) for c in commands])


def results_json(figures: list[Figure], options: BenchOptions) -> str:
    return json.dumps(
        {
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {"cpus": _cpus(), "python": platform.python_version()},
            "events": options.events,
            "runs": options.runs,
            "figures": [
                asdict(f) | {"median": f.median, "ratio": f.ratio, "meets": f.meets}
                for f in figures
            ],
        },
        indent=2,
    )


def markdown_rows(figures: list[Figure], options: BenchOptions) -> str:
    day = datetime.now(UTC).date().isoformat()
    rows = []
    for f in figures:
        ratio = f"{f.ratio:.2f}" if f.ratio is not None else ""
        met = {True: " (met)", False: " (not met)", None: ""}[f.meets]
        target = f"{f.target_text}{met}"
        rows.append(
            f"| {day} | {f.name} | {_num(f.median)} {f.unit} "
            f"| {_num(min(f.values))}–{_num(max(f.values))} "
            f"| {ratio} | {target} | {options.events:,} × {options.runs} |"
        )
    return "\n".join(rows) + "\n"


def _num(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _cpus() -> int:
    import os

    return os.cpu_count() or 0


Runner = Callable[[BenchOptions, Callable[[str], None]], Awaitable[list[Figure]]]


DEFAULT_POLICY = """
[defaults]
max_attempts = 3
lease_seconds = 300
ttl_seconds = 14400
"""

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

from app.bench.databases import mongo_database, scratch_postgres, secantus_server
from app.bench.rabbit_setup import scratch_vhost
from app.bench.scenarios import bare_consume_rate, encoded, jobtrail_ingest_rate
from app.bench.workload import lifecycle_events
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


@dataclass
class Figure:
    """One measured figure: every run's value, and its ratio to the baseline of the same run."""

    name: str
    unit: str
    values: list[float] = field(default_factory=list)
    baseline: str | None = None
    ratios: list[float] = field(default_factory=list)
    target: float | None = None
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def ratio(self) -> float | None:
        return statistics.median(self.ratios) if self.ratios else None


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


async def run_bench(options: BenchOptions, progress: Callable[[str], None]) -> list[Figure]:
    """All scenarios, ``options.runs`` times, interleaved so that machine noise hits all alike."""
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
    return [f for f in (baseline, pg, mongo) if f.values]


def results_json(figures: list[Figure], options: BenchOptions) -> str:
    return json.dumps(
        {
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {"cpus": _cpus(), "python": platform.python_version()},
            "events": options.events,
            "runs": options.runs,
            "figures": [asdict(f) | {"median": f.median, "ratio": f.ratio} for f in figures],
        },
        indent=2,
    )


def markdown_rows(figures: list[Figure], options: BenchOptions) -> str:
    day = datetime.now(UTC).date().isoformat()
    rows = []
    for f in figures:
        ratio = f"{f.ratio:.2f}" if f.ratio is not None else "baseline"
        target = f"≥ {f.target}" if f.target is not None else ""
        rows.append(
            f"| {day} | {f.name} | {f.median:,.0f} {f.unit} "
            f"| {min(f.values):,.0f}–{max(f.values):,.0f} "
            f"| {ratio} | {target} | {options.events:,} × {options.runs} |"
        )
    return "\n".join(rows) + "\n"


def _cpus() -> int:
    import os

    return os.cpu_count() or 0


Runner = Callable[[BenchOptions, Callable[[str], None]], Awaitable[list[Figure]]]

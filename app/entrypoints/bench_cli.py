"""``jobtrail bench``: run the benchmark scenarios and report ratios to same-run baselines."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from app.bench.runner import BenchOptions, Figure, _num, markdown_rows, results_json
from app.entrypoints.bench_api import run_bench
from app.entrypoints.cli_common import app, fail, load_settings

DEFAULT_SECANTUS = Path(".venv-secantus/bin/secantusd-py")


@app.command()
def bench(
    events: Annotated[int, typer.Option(min=30, max=10_000_000, help="Events per run.")] = 20_000,
    runs: Annotated[int, typer.Option(min=1, max=20, help="Runs; the median is reported.")] = 3,
    rebuild_events: Annotated[
        int, typer.Option(min=30, max=10_000_000, help="Events in the rebuild scenario's log.")
    ] = 100_000,
    timer_jobs: Annotated[
        int, typer.Option(min=10, max=1_000_000, help="Live jobs in the timer-lag scenario.")
    ] = 2_000,
    requests: Annotated[
        int, typer.Option(min=10, max=1_000_000, help="Requests per read-latency figure.")
    ] = 2_000,
    read_jobs: Annotated[
        int,
        typer.Option(
            min=0,
            max=10_000_000,
            help="Pad the projection to this many jobs before the read-latency figures.",
        ),
    ] = 0,
    memory_events: Annotated[
        int,
        typer.Option(
            min=0,
            max=100_000_000,
            help="Measure export/replay/verify memory over a log of its own of this many "
            "events, once (0: over the rebuild scenario's log, every run).",
        ),
    ] = 0,
    trackers: Annotated[
        int,
        typer.Option(
            min=0,
            max=16,
            help="Also measure ingestion by 1 and by this many `jobtrail serve` processes "
            "sharing the partitions (0: skip).",
        ),
    ] = 2,
    history_events: Annotated[
        int,
        typer.Option(
            min=0,
            max=1_000_000,
            help="Events each of the long-history scenario's 20 jobs holds before its events "
            "are measured (0: skip the scenario).",
        ),
    ] = 10_000,
    history_count: Annotated[
        int,
        typer.Option(
            min=40,
            max=1_000_000,
            help="Events ingested in the long-history scenario (and for new jobs, its baseline).",
        ),
    ] = 2_000,
    smoke: Annotated[
        bool, typer.Option(help="A quick check that the benchmark works (300 events, 1 run).")
    ] = False,
    output: Annotated[
        Path, typer.Option("--json", help="Where to write the results as JSON.")
    ] = Path("var/bench-results.json"),
    markdown: Annotated[
        Path,
        typer.Option(
            help="Where to write a dated Markdown table row per figure (`make bench` appends "
            "them to docs/performance.md).",
        ),
    ] = Path("var/bench-rows.md"),
    mongo: Annotated[
        bool, typer.Option(help="Also measure with SecantusDB as the log (started here).")
    ] = True,
    rabbit_api: Annotated[
        str, typer.Option(help="RabbitMQ management API (to make a scratch vhost).")
    ] = ("http://127.0.0.1:15672/api"),
    pg_admin_url: Annotated[str, typer.Option(help="PostgreSQL server for scratch databases.")] = (
        "postgresql://postgres@127.0.0.1:5432/postgres"
    ),
) -> None:
    """Measure ingestion against a bare aio-pika consumer, in the same run, on this machine."""
    settings = load_settings()
    for path in (output, markdown):
        _check_writable(path)
    secantus = DEFAULT_SECANTUS if mongo and DEFAULT_SECANTUS.exists() else None
    if mongo and secantus is None:
        fail(f"SecantusDB not found at {DEFAULT_SECANTUS}: run `make setup`, or pass --no-mongo", 2)
    options = BenchOptions(
        rabbit_url=settings.rabbit_url,
        rabbit_api=rabbit_api.rstrip("/"),
        pg_admin_url=pg_admin_url,
        secantus=secantus,
        events=300 if smoke else events,
        runs=1 if smoke else runs,
        rebuild_events=600 if smoke else rebuild_events,
        timer_jobs=50 if smoke else timer_jobs,
        requests=50 if smoke else requests,
        read_jobs=0 if smoke else read_jobs,
        memory_events=0 if smoke else memory_events,
        trackers=trackers,
        history_events=min(history_events, 50) if smoke else history_events,
        history_count=100 if smoke else history_count,
    )
    console = Console(stderr=True)
    try:
        figures = asyncio.run(run_bench(options, lambda step: console.log(step)))
    except (OSError, TimeoutError) as exc:
        fail(f"benchmark failed: {exc}", 3)
    Console().print(_table(figures))
    output.write_text(results_json(figures, options))
    markdown.write_text(markdown_rows(figures, options))


def _check_writable(path: Path) -> None:
    """Fail before measuring, not after, when a result file cannot be written (none is left)."""
    existed = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a"):
            pass
        if not existed:
            path.unlink()
    except OSError as exc:
        fail(f"cannot write {path}: {exc.strerror or exc}", 2)


def _table(figures: list[Figure]) -> Table:
    table = Table(title="jobtrail bench (median of runs; ratio to the same run's baseline)")
    for column in ("figure", "median", "min", "max", "ratio", "target"):
        table.add_column(column, justify="left" if column == "figure" else "right")
    for f in figures:
        table.add_row(
            f.name,
            f"{_num(f.median)} {f.unit}",
            _num(min(f.values)),
            _num(max(f.values)),
            f"{f.ratio:.2f}" if f.ratio is not None else "",
            f.target_text + {True: " ✓", False: " ✗", None: ""}[f.meets],
        )
    return table

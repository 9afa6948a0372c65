"""The analysts' commands: ``rebuild``, ``replay``, ``analyze``, ``whatif`` and ``export``."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, BinaryIO

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from app.bootstrap import Readers, open_rebuild_target, previous_tables
from app.bootstrap.formats import failure_tables, html_report, open_writer, whatif_tables
from app.bootstrap.routing import build_router
from app.domain.chain import RecordedEvent
from app.domain.events import EVENT_TYPES
from app.domain.policy import Policy
from app.entrypoints.audit_cli import instant_param
from app.entrypoints.cli_common import JsonOpt, app, fail, job_id_arg, load_settings, run
from app.entrypoints.cli_common import with_readers as _with_readers
from app.entrypoints.shapes import flat_event
from app.services.analysis import Window, analyze
from app.services.export import EVENT_COLUMNS, JOB_COLUMNS, Selection, replay
from app.services.rebuild import RebuildReport
from app.services.rebuild import rebuild as rebuild_projection
from app.services.whatif import recorded_fleet, whatif

EXPORT_BATCH = 5000


def _time_option(name: str, help_text: str) -> Any:
    return typer.Option(name, parser=instant_param, metavar="TIME", help=help_text)


SinceOpt = Annotated[datetime | None, _time_option("--since", "Events recorded from (included).")]
UntilOpt = Annotated[datetime | None, _time_option("--until", "Events recorded until (excluded).")]


class Bar:
    """Advances a rich progress bar by ``n``; ``stop`` clears the way for a prompt."""

    def __init__(self, progress: Progress, task: TaskID) -> None:
        self._progress, self._task = progress, task

    def __call__(self, n: int) -> None:
        self._progress.advance(self._task, n)

    def stop(self) -> None:
        self._progress.stop()


@contextmanager
def progress_bar(label: str, total: int | None, *, shown: bool = True) -> Iterator[Bar]:
    """A rich progress bar on standard error (when it is a terminal), gone when done."""
    console = Console(stderr=True)
    bar = Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not (shown and console.is_terminal),
        transient=True,
    )
    task = bar.add_task(label, total=total)
    with bar:
        yield Bar(bar, task)


# --- rebuild ---------------------------------------------------------------------------------


@app.command()
def rebuild(
    yes: Annotated[bool, typer.Option("--yes", help="Swap without asking.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Swap even if rows differ.")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Build and compare only; never swap.")
    ] = False,
) -> None:
    """Replay the log into fresh projection tables, prove them equal to the live ones, swap."""
    settings = load_settings()
    if not (yes or dry_run or sys.stdin.isatty()):
        fail("rebuild swaps the live projection tables: pass --yes (or --dry-run)", 2)

    async def work(readers: Readers) -> int:
        target = open_rebuild_target(settings)
        try:
            with progress_bar("replaying", await readers.log.count()) as bar:

                def confirm(report: RebuildReport) -> bool:
                    bar.stop()
                    _print_comparison(report)
                    return typer.confirm("Swap the rebuilt tables in?", err=True)

                report = await rebuild_projection(
                    readers.log,
                    target,
                    readers.policy,
                    force=force,
                    dry_run=dry_run,
                    confirm=None if yes else confirm,
                    progress=bar,
                )
        finally:
            await target.close()
        _print_outcome(report, asked=not yes and (report.equal or force) and not dry_run)
        return 0 if report.equal else 1

    run(lambda: _with_readers(settings, work))


def _print_comparison(report: RebuildReport) -> None:
    typer.echo(f"replayed {report.events} events of {report.jobs_rebuilt} jobs")
    typer.echo(
        f"compared with the live projection ({report.live_jobs} jobs): "
        f"{report.identical} identical, {report.different} different"
    )
    for found in report.first_differences:
        for what, live, rebuilt in found.changes:
            typer.echo(f"DIFF {found.job_id} {what}: live {live}, rebuilt {rebuilt}")


def _print_outcome(report: RebuildReport, *, asked: bool) -> None:
    if not asked:
        _print_comparison(report)
    previous = ", ".join(previous_tables())
    if report.swapped:
        typer.echo(f"swapped: the rebuilt tables are live; the old ones are kept as {previous}")
    else:
        typer.echo("not swapped: the live tables are unchanged")


# --- replay ----------------------------------------------------------------------------------


def _types(values: list[str]) -> frozenset[str]:
    unknown = sorted(set(values) - set(EVENT_TYPES))
    if unknown:
        raise typer.BadParameter(
            f"unknown event type {unknown[0]!r} (one of {', '.join(EVENT_TYPES)})"
        )
    return frozenset(values)


@app.command("replay")
def replay_command(
    since: Annotated[datetime | None, _time_option("--from", "From (included).")] = None,
    until: Annotated[datetime | None, _time_option("--to", "To (excluded).")] = None,
    job: Annotated[str | None, typer.Option("--job", help="Only this job.")] = None,
    types: Annotated[
        list[str] | None, typer.Option("--type", help="Only this event type (repeatable).")
    ] = None,
) -> None:
    """Stream the events recorded in [--from, --to) in recorded order, one JSON object a line."""
    selection = Selection(
        Window(since, until), job_id_arg(job) if job else None, _types(types or [])
    )
    settings = load_settings()

    async def work(readers: Readers) -> int:

        out = sys.stdout
        async for recorded in replay(readers.log, selection):
            out.write(json.dumps(flat_event(recorded)) + "\n")
        out.flush()
        return 0

    run(lambda: _with_readers(settings, work))


# --- analyze ---------------------------------------------------------------------------------


@app.command("analyze")
def analyze_command(
    since: SinceOpt = None,
    until: UntilOpt = None,
    as_json: JsonOpt = False,
    html: Annotated[
        Path | None, typer.Option("--html", metavar="FILE", help="Also write an HTML page.")
    ] = None,
) -> None:
    """A failure report: rates by node, pool, model, queue and error; times; dead letters."""
    settings = load_settings()

    async def work(readers: Readers) -> int:
        with progress_bar("analyzing", await readers.log.count()) as step:
            report = (
                await analyze(readers.log, readers.policy, Window(since, until), step)
            ).as_dict()
        if html is not None:
            _write_text(html, html_report(report))
            typer.echo(f"wrote {html}", err=True)
        if as_json:
            typer.echo(json.dumps(report))
        else:
            console = Console(width=max(Console().width, 110))
            for table in failure_tables(report):
                console.print(table)
        return 0

    run(lambda: _with_readers(settings, work))


def _write_text(path: Path, content: str) -> None:
    try:
        path.write_text(content, encoding="utf-8")
    except OSError as exc:
        fail(f"cannot write {path}: {exc.strerror}", 2)


# --- whatif ----------------------------------------------------------------------------------


def _read_policy(path: Path) -> Policy:
    try:
        text = path.read_text()
    except OSError as exc:
        fail(f"cannot read policy file {path}: {exc.strerror}", 2)
    try:
        return Policy.from_toml(text)
    except ValueError as exc:
        fail(f"{path}: {exc}", 2)


@app.command("whatif")
def whatif_command(
    policy: Annotated[
        Path | None,
        typer.Option("--policy", metavar="FILE", help="The other policy (default: the live one)."),
    ] = None,
    routing: Annotated[
        str | None,
        typer.Option("--routing", metavar="NAME", help="Route every job with this routing plugin."),
    ] = None,
    as_json: JsonOpt = False,
    as_of: Annotated[
        datetime | None, _time_option("--as-of", "History up to this instant (default: now).")
    ] = None,
) -> None:
    """Replay real history under another policy or routing plugin; show it beside what really
    happened."""
    if policy is None and routing is None:
        fail("name the other policy (--policy FILE), a routing plugin (--routing NAME) or both", 2)
    other = _read_policy(policy) if policy is not None else None
    settings = load_settings()
    horizon = as_of or datetime.now(UTC)
    name = " + ".join(n for n in (policy and policy.name, routing and f"routing {routing}") if n)

    async def work(readers: Readers) -> int:
        simulated = other or readers.policy
        router = None
        if routing is not None or simulated.routing_plugins():
            fleet = await recorded_fleet(readers.log)
            router = build_router(simulated, routing, fleet)
        with progress_bar("replaying", await readers.log.count()) as step:
            report = await whatif(readers.log, readers.policy, simulated, horizon, step, router)
        if as_json:
            typer.echo(json.dumps(report.as_dict()))
        else:
            console = Console(width=max(Console().width, 100))
            for part in whatif_tables(report.as_dict(), name):
                console.print(part, soft_wrap=True)
        return 0

    run(lambda: _with_readers(settings, work))


# --- export ----------------------------------------------------------------------------------


class ExportFormat(StrEnum):
    JSONL = "jsonl"
    CSV = "csv"
    PARQUET = "parquet"


@app.command("export")
def export_command(
    fmt: Annotated[ExportFormat, typer.Option("--format", help="Output format.")],
    output: Annotated[
        Path | None, typer.Option("--output", metavar="FILE", help="Write here, not to stdout.")
    ] = None,
    projections: Annotated[
        bool, typer.Option("--projections", help="Export job rows instead of events.")
    ] = False,
) -> None:
    """Stream every event (or job row) as JSON Lines, CSV or Parquet, in constant memory."""
    settings = load_settings()

    async def work(readers: Readers) -> int:
        total = None if projections else await readers.log.count()
        rows = _job_rows(readers) if projections else _event_rows(readers)
        columns = JOB_COLUMNS if projections else EVENT_COLUMNS
        with (
            _output(output) as out,
            progress_bar("exporting", total, shown=output is not None) as step,
        ):
            writer = open_writer(fmt.value, out, columns)
            batch: list[dict[str, Any]] = []
            async for row in rows:
                batch.append(row)
                if len(batch) >= EXPORT_BATCH:
                    writer.write(batch)
                    step(len(batch))
                    batch = []
            writer.write(batch)
            step(len(batch))
            writer.close()
        return 0

    run(lambda: _with_readers(settings, work))


@contextmanager
def _output(path: Path | None) -> Iterator[BinaryIO]:
    if path is None:
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    try:
        handle = path.open("wb")
    except OSError as exc:
        fail(f"cannot write {path}: {exc.strerror}", 2)
    with handle:
        yield handle


async def _event_rows(readers: Readers) -> AsyncIterator[dict[str, Any]]:

    recorded: RecordedEvent
    async for recorded in readers.log.scan():
        yield flat_event(recorded)


async def _job_rows(readers: Readers) -> AsyncIterator[dict[str, Any]]:
    async for row in readers.store.all_jobs():
        yield {k: v.isoformat() if isinstance(v, datetime) else v for k, v in asdict(row).items()}

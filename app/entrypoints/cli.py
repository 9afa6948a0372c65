"""The ``jobtrail`` command line."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated

import typer

from app.bootstrap import Readers, build_tracking, prepare_storage
from app.bootstrap.hosting import listen
from app.bootstrap.metrics import Metrics
from app.domain.chain import StoredEvent, verify_chain
from app.entrypoints import (  # noqa: F401 - these modules register their commands
    analysis_cli,
    api_cli,
    asyncapi_cli,
    audit_cli,
    bench_cli,
    demo_cli,
    doctor_cli,
    logs,
    operator_cli,
    sla_cli,
)
from app.entrypoints.audit_cli import AsOfOpt, print_row, progress_bar
from app.entrypoints.cli_common import (
    USAGE_ERROR,
    JobIdArg,
    JsonOpt,
    app,
    fail,
    load_settings,
    run,
    with_readers,
)
from app.entrypoints.shapes import flat_event
from app.entrypoints.supervisor import MAX_WORKERS, serve_with_workers
from app.services.audit import job_row_as_of
from app.services.projection import job_row
from app.services.tracking import fold_history
from app.settings import Settings

log = logging.getLogger("jobtrail")


WorkersOpt = Annotated[
    int | None,
    typer.Option(
        "--workers",
        min=1,
        max=MAX_WORKERS,
        show_default=False,
        help="Tracker processes sharing the partitions, under one supervisor (default: "
        "JOBTRAIL_WORKERS, else the machine's cores; 1 with SQLite, which takes one writer).",
    ),
]


@app.command()
def serve(workers: WorkersOpt = None) -> None:
    """Run the tracker: migrations, subscribers, timers and the outbox relay, until SIGTERM."""
    settings = load_settings()
    logs.configure(settings.log_level, settings.log_format)
    serve_with_workers(settings, workers, prepare=_prepare_serve, serve=_serve)


async def _prepare_serve(settings: Settings) -> socket.socket:
    """What runs once per ``serve`` (in the supervisor of ``--workers N``): the HTTP socket,
    preflight and migrations; concurrent Alembic runs would race."""
    if not settings.uses_mongo:
        kind = "SQLite" if settings.log_url.startswith("sqlite") else "SQL"
        log.warning(
            "EMBEDDED MODE: the event log is %s (%s), not MongoDB. "
            "Set JOBTRAIL_LOG_URL=mongodb://... for production.",
            kind,
            _redact(settings.log_url),
        )
    sock = listen(settings.http_host, settings.http_port)  # a taken port fails before anything runs
    await doctor_cli.refuse_to_start(settings)
    await prepare_storage(settings)
    return sock


async def _serve(settings: Settings, sock: socket.socket | None = None) -> int:
    """One tracker until SIGTERM; a worker of ``--workers N`` gets the supervisor's ``sock``."""
    # FastStream, FastAPI and uvicorn are loaded here, by the one command that runs them.
    from app.bootstrap.worker import create_app
    from app.entrypoints.api_server import serve_api

    if sock is None:
        sock = await _prepare_serve(settings)
    tracking = build_tracking(settings)
    metrics = Metrics()
    metrics.watch(tracking)
    await tracking.start()
    stream = create_app(tracking)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stream.start()
    # What start-up built lives as long as the process: frozen, full collections skip it. They
    # took ~0.4 s otherwise on a busy 2-core machine, a stall of the loop that acks deliveries
    # whenever a long read (GET /fleet) churned enough objects to trigger one.
    gc.freeze()
    api = asyncio.create_task(
        serve_api(settings, tracking.readers, tracking.health, metrics, stop, sock=sock)
    )
    log.info(
        "jobtrail serving",
        extra={"rabbit": _redact(settings.rabbit_url), "mongo": settings.uses_mongo},
    )
    await asyncio.wait({api, asyncio.create_task(stop.wait())}, return_when="FIRST_COMPLETED")
    stop.set()
    log.info("jobtrail stopping")
    await stream.stop()
    await tracking.stop()
    await api  # re-raises if the API server crashed
    log.info("jobtrail stopped")
    return 0


def _redact(url: str) -> str:
    head, sep, tail = url.rpartition("@")
    return f"{head.split('://')[0]}://***@{tail}" if sep else url


@app.command()
def migrate() -> None:
    """Apply the SQL migrations (projections, and the SQL event log if configured)."""
    settings = load_settings()

    async def work() -> int:
        await prepare_storage(settings)
        typer.echo("migrations applied")
        return 0

    run(work)


@app.command()
def status(job_id: JobIdArg, as_json: JsonOpt = False, as_of: AsOfOpt = None) -> None:
    """Print a job's current state (its projection), or its state as of a past instant."""
    settings = load_settings()
    run(lambda: with_readers(settings, lambda r: _status(r, job_id, as_json, as_of)))


async def _status(readers: Readers, job_id: str, as_json: bool, as_of: datetime | None) -> int:
    if as_of is not None:
        past = await job_row_as_of(readers.log, readers.policy, job_id, as_of)
        if past is None:
            fail(f"no events recorded for job {job_id!r} by {as_of.isoformat()}", 2)
        print_row(past, as_json)
        return 0
    row = await readers.store.get_job(job_id)
    if row is None:
        events = await readers.log.read_job(job_id)
        if not events:
            fail(f"no events for job {job_id!r}", 2)
        row = job_row(fold_history(events, readers.policy), readers.policy)
    print_row(row, as_json)
    return 0


@app.command()
def history(job_id: JobIdArg, as_json: JsonOpt = False) -> None:
    """Print every recorded event of a job, in seq order."""
    settings = load_settings()
    run(lambda: with_readers(settings, lambda r: _history(r, job_id, as_json)))


async def _history(readers: Readers, job_id: str, as_json: bool) -> int:
    events = await readers.log.read_job(job_id)
    if not events:
        fail(f"no events for job {job_id!r}", 2)
    entries = [flat_event(e) for e in events]
    if as_json:
        typer.echo(json.dumps(entries))
        return 0
    for e in entries:
        extra = e.get("reason") or e.get("error_code") or e.get("node_id") or e.get("queue") or ""
        typer.echo(
            f"{e['seq']:>4}  {e['recorded_at']}  {e['type']:<14} attempt {e['attempt']}  {extra}"
        )
    return 0


@app.command()
def verify(
    job: Annotated[str | None, typer.Option(help="Verify only this job.")] = None,
) -> None:
    """Re-compute every job's hash chain; exit 1 and name each broken job if any."""
    settings = load_settings()
    run(lambda: with_readers(settings, lambda r: _verify(r, job)))


async def _verify(readers: Readers, job: str | None) -> int:
    broken = checked = 0
    if job is not None:
        entries = await readers.log.read_job_raw(job)
        if not entries:
            fail(f"no events for job {job!r}", 2)
        groups: AsyncIterator[tuple[str, list[StoredEvent]]] = _single(job, entries)
    else:
        groups = _chains(readers.log.scan_raw())
    total, done = await readers.log.count(), 0
    with progress_bar("verifying") as advance:
        async for job_id, chain in groups:
            checked, done = checked + 1, done + len(chain)
            advance(done, max(total, done))
            found = verify_chain(job_id, chain)
            if found is not None:
                broken += 1
                typer.echo(f"BROKEN {found.job_id} at seq {found.seq}: {found.reason}")
    typer.echo(f"verified {checked} jobs: {checked - broken} intact, {broken} broken", err=True)
    return 1 if broken else 0


async def _single(
    job_id: str, entries: list[StoredEvent]
) -> AsyncIterator[tuple[str, list[StoredEvent]]]:
    yield job_id, entries


async def _chains(
    entries: AsyncIterator[StoredEvent],
) -> AsyncIterator[tuple[str, list[StoredEvent]]]:
    """Group a (job_id, seq)-ordered scan into one chain per job, one job in memory at a time."""
    current: list[StoredEvent] = []
    async for entry in entries:
        if current and entry.job_id != current[0].job_id:
            yield current[0].job_id, current
            current = []
        current.append(entry)
    if current:
        yield current[0].job_id, current


def main() -> None:
    """Console-script entry point: usage errors are one line on standard error, exit code 2."""
    try:
        code = app(prog_name="jobtrail", standalone_mode=False)
    except USAGE_ERROR as exc:
        ctx = getattr(exc, "ctx", None)
        command = ctx.command_path if ctx is not None else "jobtrail"
        if message := exc.format_message():  # empty when the help was already shown
            typer.echo(f"jobtrail: {message} (see '{command} --help')", err=True)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        sys.exit(130)
    except Exception as exc:  # a bug or an unforeseen failure: one line, the traceback in the log
        sys.exit(_unexpected(exc))
    sys.exit(code if isinstance(code, int) else 0)


def _unexpected(exc: Exception) -> int:
    """Say an unexpected error in one line; log its traceback at DEBUG level."""
    if os.environ.get("JOBTRAIL_LOG_LEVEL", "").upper() == "DEBUG" and not logging.root.handlers:
        logs.configure("DEBUG", os.environ.get("JOBTRAIL_LOG_FORMAT", "auto"))
    log.debug("unexpected error", exc_info=exc)
    summary = (str(exc).strip().splitlines() or [""])[0][:300]
    typer.echo(
        f"jobtrail: unexpected error: {type(exc).__name__}: {summary} "
        "(JOBTRAIL_LOG_LEVEL=DEBUG logs the traceback)",
        err=True,
    )
    return 1

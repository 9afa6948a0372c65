"""``jobtrail api`` (serve the HTTP API) and ``jobtrail jobs`` (list jobs, with the API's filters).

The server itself (uvicorn, FastAPI) is in app/entrypoints/api_server.py, imported only by the
commands that serve.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from app.bootstrap import open_queries, open_readers
from app.bootstrap.metrics import Metrics
from app.entrypoints import logs
from app.entrypoints.cli_common import JsonOpt, app, fail, load_settings, run
from app.entrypoints.shapes import row_json
from app.ports import JobFilter
from app.services.queries import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, JobPage, list_jobs
from app.settings import Settings

log = logging.getLogger("jobtrail.api")

TABLE_COLUMNS = ("updated_at", "job_id", "status", "attempt", "queue", "pool", "tenant", "model")
MAX_CELL = 40


@app.command()
def api() -> None:
    """Serve the HTTP API on JOBTRAIL_HTTP_HOST:JOBTRAIL_HTTP_PORT until SIGTERM."""
    settings = load_settings()
    run(lambda: _api(settings))


async def _api(settings: Settings) -> int:
    from app.entrypoints.api_auth import load_tokens  # FastAPI and uvicorn: only when serving
    from app.entrypoints.api_server import serve_api
    from app.entrypoints.doctor_cli import refuse_to_start

    tokens = load_tokens()
    await refuse_to_start(settings, api_only=True)
    readers = open_readers(settings)
    logs.configure(settings.log_level, settings.log_format)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await serve_api(settings, readers, None, Metrics(), stop, tokens=tokens)
    finally:
        await readers.close()
    log.info("jobtrail api stopped")
    return 0


def _option(help_text: str) -> Any:
    return typer.Option(help=help_text, show_default=False)


@app.command()
def jobs(
    status: Annotated[str | None, _option("queued, reserved, cooling_down, completed, …")] = None,
    queue: Annotated[str | None, _option("Current work queue.")] = None,
    pool: Annotated[str | None, _option("Current pool.")] = None,
    tenant: Annotated[str | None, _option("Tenant.")] = None,
    model: Annotated[str | None, _option("Model.")] = None,
    priority: Annotated[str | None, _option("urgent, bulk or test.")] = None,
    job_type: Annotated[str | None, _option("sync, polling, batch or stream.")] = None,
    updated_since: Annotated[str | None, _option("Changed at or after (ISO-8601).")] = None,
    updated_until: Annotated[str | None, _option("Changed before (ISO-8601).")] = None,
    error_code: Annotated[str | None, _option("Last error code.")] = None,
    node_id: Annotated[str | None, _option("Node of the current attempt.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
    cursor: Annotated[str | None, _option("next_cursor of the previous page.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List jobs matching every filter, most recently changed first, one page at a time."""
    given = {
        "status": status,
        "queue": queue,
        "pool": pool,
        "tenant": tenant,
        "model": model,
        "priority": priority,
        "job_type": job_type,
        "updated_since": updated_since,
        "updated_until": updated_until,
        "error_code": error_code,
        "node_id": node_id,
    }
    filters = parse_filters({k: v for k, v in given.items() if v is not None})
    settings = load_settings()
    run(lambda: _jobs(settings, filters, limit, cursor, as_json))


def parse_filters(values: dict[str, str]) -> JobFilter:
    """The filters, or one line on standard error naming the bad option (exit 2)."""
    try:
        return JobFilter.model_validate(values)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        option = "--" + str(error["loc"][0]).replace("_", "-") if error["loc"] else "filters"
        fail(f"invalid {option}: {error['msg'].removeprefix('Value error, ')}", 2)


async def _jobs(
    settings: Settings, filters: JobFilter, limit: int, cursor: str | None, as_json: bool
) -> int:
    queries = open_queries(settings)
    try:
        page = await list_jobs(queries, filters, limit=limit, cursor=cursor)
    finally:
        await queries.close()
    if as_json:
        items = [row_json(row) for row in page.items]
        typer.echo(json.dumps({"items": items, "next_cursor": page.next_cursor}))
    else:
        _print_table(page)
    return 0


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


def _print_table(page: JobPage) -> None:
    rows = [[_cell(row_json(job)[c]) for c in TABLE_COLUMNS] for job in page.items]
    if not rows:
        typer.echo("no matching jobs", err=True)
        return
    header = [c.upper() for c in TABLE_COLUMNS]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for line in [header, *rows]:
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
    if page.next_cursor is not None:
        typer.echo(f"more: --cursor {page.next_cursor}", err=True)

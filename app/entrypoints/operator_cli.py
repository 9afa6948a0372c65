"""Operators' commands: ``jobtrail redrive`` and ``jobtrail cancel`` (recorded as events)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer

from app.bootstrap import open_queries, open_readers
from app.client import JobtrailClient
from app.domain.events import DeadLetterReason
from app.entrypoints.cli_common import JobIdArg, app, fail, load_settings, run
from app.services.operations import (
    InvalidAction,
    RedriveSelection,
    cancel_event,
    dead_letters,
    publish_all,
    redrive_event,
)
from app.settings import Settings

_DURATION = re.compile(r"^(\d{1,6})([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}

ActorOpt = Annotated[
    str, typer.Option(help="Who is acting; recorded in the event.", show_default=False)
]


def parse_since(value: str | None) -> datetime | None:
    """``1h``, ``30m``, ``2d`` ago, or an ISO-8601 instant with an offset."""
    if value is None:
        return None
    if match := _DURATION.fullmatch(value):
        amount, unit = int(match[1]), _UNITS[match[2]]
        return datetime.now(UTC) - timedelta(**{unit: amount})
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is neither a duration (1h, 30m, 2d) nor an instant"
        ) from None
    if moment.tzinfo is None:
        raise typer.BadParameter(f"{value!r} has no UTC offset")
    return moment


@app.command()
def redrive(
    actor: ActorOpt,
    reason: Annotated[
        DeadLetterReason | None, typer.Option(help="Only this dead-letter reason.")
    ] = None,
    pool: Annotated[
        str | None, typer.Option(help="Only jobs dead-lettered from this pool.")
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="Dead-lettered since: 1h, 30m, 2d or an instant.")
    ] = None,
    limit: Annotated[
        int, typer.Option(min=1, max=100_000, help="At most this many jobs.")
    ] = 10_000,
    dry_run: Annotated[
        bool, typer.Option(help="Change nothing; print the job ids, one per line.")
    ] = False,
) -> None:
    """Send matching dead-lettered jobs back to their queues as new attempts (redriven events)."""
    settings = load_settings()
    selection = RedriveSelection(reason, pool, parse_since(since), limit)
    run(lambda: _redrive(settings, selection, actor, dry_run))


async def _redrive(
    settings: Settings, selection: RedriveSelection, actor: str, dry_run: bool
) -> int:
    queries = open_queries(settings)
    try:
        rows = await dead_letters(queries, selection)
    finally:
        await queries.close()
    if dry_run:
        for row in rows:
            typer.echo(row.job_id)
        return 0
    now = datetime.now(UTC)
    events = [redrive_event(row, actor, now) for row in rows]
    async with JobtrailClient(settings.rabbit_url, source="operator") as client:
        await publish_all(client, events)
    for event in events:
        typer.echo(f"redriven {event.job_id} as attempt {event.attempt}")
    typer.echo(f"{len(events)} jobs redriven by {actor}", err=True)
    return 0


@app.command()
def cancel(
    job_id: JobIdArg,
    actor: ActorOpt,
    reason: Annotated[str, typer.Option(help="Why; recorded in the event.")] = "",
) -> None:
    """Cancel a live job (a ``cancelled`` event); it is never republished afterwards."""
    settings = load_settings()
    run(lambda: _cancel(settings, job_id, actor, reason))


async def _cancel(settings: Settings, job_id: str, actor: str, reason: str) -> int:
    readers = open_readers(settings)
    try:
        row = await readers.store.get_job(job_id)
    finally:
        await readers.close()
    if row is None:
        fail(f"no job {job_id!r}", 2)
    try:
        event = cancel_event(row, actor, datetime.now(UTC), reason)
    except InvalidAction as exc:
        fail(str(exc), 1)
    async with JobtrailClient(settings.rabbit_url, source="operator") as client:
        await client.publish(event)
    typer.echo(f"cancelled {job_id} (attempt {event.attempt}) by {actor}")
    return 0

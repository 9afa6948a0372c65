"""The auditors' commands: ``asof``, ``fleet``, ``verify-range``, ``anchor``, ``verify-anchors``."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import date, datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from app.bootstrap import Readers, open_anchors, open_readers, system_clock
from app.domain.chain import ChainBreak
from app.domain.merkle import Anchor, EntryRef
from app.domain.state import JobStatus
from app.entrypoints.cli_common import (
    JobIdArg,
    JsonOpt,
    app,
    fail,
    load_settings,
    run,
    with_readers,
)
from app.ports import AnchorBackend, JobRow
from app.services.audit import (
    AnchorCheck,
    AnchorStatus,
    FleetGroup,
    FleetKey,
    OnProgress,
    anchor_day,
    default_anchor_day,
    fleet_as_of,
    job_row_as_of,
    parse_day,
    parse_instant,
    verify_anchors,
    verify_range,
)
from app.settings import Settings


def instant_param(value: str) -> datetime:
    """Typer parser of an instant option (``2026-11-27T14:02:00Z``; a bare date is 00:00Z)."""
    try:
        return parse_instant(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def day_param(value: str) -> date:
    """Typer parser of a UTC day option (``2026-11-27``)."""
    try:
        return parse_day(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


_TIME_HELP = "An ISO-8601 instant with its offset, e.g. 2026-11-27T14:02:00Z."
AtOpt = Annotated[
    datetime, typer.Option("--at", parser=instant_param, metavar="TIME", help=_TIME_HELP)
]
AsOfOpt = Annotated[
    datetime | None,
    typer.Option(
        "--as-of", parser=instant_param, metavar="TIME", help="State as of this instant instead."
    ),
]
"""For ``jobtrail status --as-of``: fold only the events recorded up to that instant."""


@contextmanager
def progress_bar(label: str) -> Iterator[OnProgress]:
    """A progress bar on standard error when it is a terminal; a silent callback otherwise."""
    console = Console(stderr=True)
    progress = Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not console.is_terminal,
        transient=True,
    )
    task = progress.add_task(label, total=None)

    def advance(done: int, total: int) -> None:
        progress.update(task, completed=done, total=total)

    with progress:
        yield advance


def print_row(row: JobRow, as_json: bool) -> None:
    """A job row as ``jobtrail status`` prints it."""
    data = {k: _jsonable(v) for k, v in asdict(row).items()}
    if as_json:
        typer.echo(json.dumps(data))
        return
    for key, value in data.items():
        typer.echo(f"{key:>18}  {'' if value is None else value}")


def _jsonable(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime | date) else value


@app.command()
def asof(job_id: JobIdArg, at: AtOpt, as_json: JsonOpt = False) -> None:
    """Print a job's state as of an instant: the fold of its events recorded up to then."""
    settings = load_settings()
    run(lambda: with_readers(settings, lambda r: _asof(r, job_id, at, as_json)))


async def _asof(readers: Readers, job_id: str, at: datetime, as_json: bool) -> int:
    row = await job_row_as_of(readers.log, readers.policy, job_id, at)
    if row is None:
        fail(f"no events recorded for job {job_id!r} by {at.isoformat()}", 2)
    print_row(row, as_json)
    return 0


StatusOpt = Annotated[
    JobStatus | None, typer.Option("--status", help="Count only jobs in this state.")
]
ByOpt = Annotated[FleetKey | None, typer.Option("--by", help="Group the jobs by this field.")]
ListOpt = Annotated[
    bool, typer.Option("--list", "--ids", help="Also print the job ids of each group.")
]


@app.command()
def fleet(
    at: AtOpt,
    status: StatusOpt = None,
    by: ByOpt = None,
    list_ids: ListOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Count the jobs in each state (or one state) at an instant, from the log, grouped."""
    settings = load_settings()

    async def work(readers: Readers) -> int:
        wanted = None if status is None else status.value
        groups = await fleet_as_of(
            readers.log, readers.policy, at, status=wanted, by=by, with_ids=list_ids
        )
        _print_fleet(groups, at, wanted, by, list_ids, as_json)
        return 0

    run(lambda: with_readers(settings, work))


def _print_fleet(
    groups: list[FleetGroup],
    at: datetime,
    status: str | None,
    by: FleetKey | None,
    list_ids: bool,
    as_json: bool,
) -> None:
    total = sum(g.count for g in groups)
    if as_json:
        items = [_fleet_item(g, by, list_ids) for g in groups]
        report = {"at": at.isoformat(), "status": status, "by": by, "total": total, "groups": items}
        typer.echo(json.dumps(report))
        return
    head = by.value if by is not None else ""
    width = max([len(head), *(len(g.key or "-") for g in groups)])
    typer.echo(f"{head:<{width}}  {'status':<13} {'jobs':>6}".strip())
    for group in groups:
        key = (group.key or "-") if by is not None else ""
        typer.echo(f"{key:<{width}}  {group.status or '-':<13} {group.count:>6}".strip())
        for job_id in group.job_ids:
            typer.echo(f"  {job_id}")
    typer.echo(f"{total} jobs as of {at.isoformat()}")


def _fleet_item(group: FleetGroup, by: FleetKey | None, list_ids: bool) -> dict[str, Any]:
    # The same group shape as GET /fleet: the grouping value under "key" (the field is "by").
    item: dict[str, Any] = {} if by is None else {"key": group.key}
    item |= {"status": group.status, "count": group.count}
    if list_ids:
        item["job_ids"] = list(group.job_ids)
    return item


SinceOpt = Annotated[
    datetime, typer.Option("--since", parser=instant_param, metavar="TIME", help="From (included).")
]
UntilOpt = Annotated[
    datetime, typer.Option("--until", parser=instant_param, metavar="TIME", help="To (excluded).")
]


@app.command("verify-range")
def verify_range_command(since: SinceOpt, until: UntilOpt, as_json: JsonOpt = False) -> None:
    """Re-verify the hash chain of every job with events recorded in [--since, --until)."""
    settings = load_settings()

    async def work(readers: Readers, anchors: AnchorBackend) -> int:
        with progress_bar("verifying") as progress:
            report = await verify_range(readers.log, anchors, since, until, progress)
        if as_json:
            broken = [_break_item(b) for b in report.broken]
            summary: dict[str, Any] = {"since": since.isoformat(), "until": until.isoformat()}
            summary |= {"jobs": report.checked, "broken": broken}
            typer.echo(json.dumps(summary))
        else:
            _print_breaks(report.broken)
            intact = report.checked - len(report.broken)
            typer.echo(
                f"verified {report.checked} jobs with events recorded in "
                f"[{since.isoformat()}, {until.isoformat()}): "
                f"{intact} intact, {len(report.broken)} broken",
                err=True,
            )
        return 1 if report.broken else 0

    run(lambda: _with_anchors(settings, work))


def _print_breaks(breaks: tuple[ChainBreak, ...]) -> None:
    for found in breaks:
        typer.echo(f"BROKEN {found.job_id} at seq {found.seq}: {found.reason}")


def _break_item(found: ChainBreak) -> dict[str, Any]:
    return {"job_id": found.job_id, "seq": found.seq, "reason": found.reason}


async def _with_anchors(
    settings: Settings, work: Callable[[Readers, AnchorBackend], Awaitable[int]]
) -> int:
    """Open the log (as readers) and the anchor store beside it, run ``work``, close both."""
    readers = open_readers(settings)
    try:
        anchors = open_anchors(settings)
        try:
            return await work(readers, anchors)
        finally:
            await anchors.close()
    finally:
        await readers.close()


DayOpt = Annotated[
    date | None,
    typer.Option(
        "--day", parser=day_param, metavar="DAY", help="The UTC day (default: yesterday)."
    ),
]


@app.command()
def anchor(day: DayOpt = None, as_json: JsonOpt = False) -> None:
    """Compute a day's Merkle root over the log, store it (once) and print it."""
    settings = load_settings()
    clock = system_clock()

    async def work(readers: Readers, anchors: AnchorBackend) -> int:
        wanted = day or default_anchor_day(clock)
        check = await anchor_day(readers.log, anchors, anchors, clock, wanted)
        if as_json:
            typer.echo(json.dumps({"status": check.status} | _check_item(check)))
        else:
            _print_anchor_check(check)
        return 0 if check.status in (AnchorStatus.ANCHORED, AnchorStatus.UNCHANGED) else 1

    run(lambda: _with_anchors(settings, work))


def _print_anchor_check(check: AnchorCheck) -> None:
    day = check.anchored.day
    if check.status is AnchorStatus.BROKEN:
        _print_breaks(check.breaks)
        typer.echo(f"jobtrail: not anchoring {day}: {check.changes[-1]}", err=True)
    elif check.status is AnchorStatus.CHANGED:
        typer.echo(f"CHANGED {day}: {'; '.join(check.changes)}")
    else:
        verb = "anchored" if check.status is AnchorStatus.ANCHORED else "already anchored"
        typer.echo(f"{verb} {_anchor_line(check.anchored)}")


def _anchor_line(anchored: Anchor) -> str:
    return (
        f"{anchored.day}: root {anchored.root} over {anchored.count} entries "
        f"(first {_ref(anchored.first)}, last {_ref(anchored.last)})"
    )


def _ref(ref: EntryRef | None) -> str:
    return "none" if ref is None else str(ref)


def _anchor_item(anchored: Anchor) -> dict[str, Any]:
    return {k: _jsonable(v) for k, v in asdict(anchored).items()}


def _check_item(check: AnchorCheck) -> dict[str, Any]:
    """The stored anchor, what the log gives now (root, count, first, last), and what differs."""
    item = _anchor_item(check.anchored)
    now = _anchor_item(check.current)
    item["now"] = {k: now[k] for k in ("root", "count", "first", "last")}
    item["changes"] = check.changes
    item["broken"] = [_break_item(b) for b in check.breaks]
    return item


SinceDayOpt = Annotated[
    date | None,
    typer.Option("--since", parser=day_param, metavar="DAY", help="Only days from this one on."),
]


@app.command("verify-anchors")
def verify_anchors_command(since: SinceDayOpt = None, as_json: JsonOpt = False) -> None:
    """Recompute every anchored day from the log; exit 1 naming each day that changed."""
    settings = load_settings()
    clock = system_clock()

    async def work(readers: Readers, anchors: AnchorBackend) -> int:
        with progress_bar("checking days") as progress:
            checks = await verify_anchors(readers.log, anchors, anchors, clock, since, progress)
        changed = [c for c in checks if c.status is AnchorStatus.CHANGED]
        if as_json:
            items = [_check_item(c) for c in changed]
            typer.echo(json.dumps({"days": len(checks), "changed": items}))
        else:
            for check in changed:
                typer.echo(f"CHANGED {check.anchored.day}: {'; '.join(check.changes)}")
                _print_breaks(check.breaks)
            typer.echo(
                f"verified {len(checks)} anchored days: "
                f"{len(checks) - len(changed)} unchanged, {len(changed)} changed",
                err=True,
            )
        return 1 if changed else 0

    run(lambda: _with_anchors(settings, work))

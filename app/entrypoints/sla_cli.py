"""The operators' latency commands: ``jobtrail sla`` and ``jobtrail fairness``."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from app.bootstrap import Readers, open_queries, system_clock
from app.entrypoints.audit_cli import instant_param
from app.entrypoints.cli_common import JsonOpt, app, load_settings, run, with_readers
from app.services.sla import (
    Source,
    fairness_from_log,
    parse_by,
    report_window,
    sla,
)

_AGO = re.compile(r"^(\d{1,6})([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def since_param(value: str) -> datetime:
    """``--since``: a duration back from now (``30m``, ``2h``, ``1d``) or an ISO-8601 instant."""
    found = _AGO.fullmatch(value.strip())
    if found is None:
        return instant_param(value)
    amount, unit = found.groups()
    try:
        return datetime.now(UTC) - timedelta(**{_UNITS[unit]: int(amount)})
    except OverflowError:
        raise typer.BadParameter(f"{value} ago is before the year 1") from None


SinceOpt = Annotated[
    datetime | None,
    typer.Option(
        "--since",
        parser=since_param,
        metavar="TIME",
        help="Window start: 30m, 2h, 1d back from now, or an instant (default: 1h).",
    ),
]
UntilOpt = Annotated[
    datetime | None,
    typer.Option("--until", parser=instant_param, metavar="TIME", help="Window end (now)."),
]


def _by_param(value: str | None) -> str | None:
    """Refuse an unknown ``--by`` dimension before anything is opened."""
    try:
        parse_by(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    return value


@app.command("sla")
def sla_command(
    since: SinceOpt = None,
    until: UntilOpt = None,
    by: Annotated[
        str | None,
        typer.Option(
            "--by",
            callback=_by_param,
            help="Group by, comma-separated: pool, job_type, priority, tenant (all).",
        ),
    ] = None,
    source: Annotated[
        Source, typer.Option("--source", help="Fold the log, or read the projection.")
    ] = Source.LOG,
    as_json: JsonOpt = False,
) -> None:
    """Waits, runs and end-to-end times (p50/p95/p99) against the policy's [sla] targets."""
    settings = load_settings()

    async def work(readers: Readers) -> int:
        window = report_window(since, until, system_clock().now())
        queries = open_queries(settings)
        try:
            report = await sla(source, readers.log, queries, readers.policy, window, parse_by(by))
        finally:
            await queries.close()
        body = report.as_dict()
        if as_json:
            typer.echo(json.dumps(body))
        else:
            Console(width=max(Console().width, 120)).print(_sla_table(body))
        return 0

    run(lambda: with_readers(settings, work))


def _cell(measure: dict[str, Any]) -> str:
    if not measure["count"]:
        return "–"
    text = f"{measure['p50']}/{measure['p95']}/{measure['p99']} s (n={measure['count']})"
    breaches = sum(measure["breaches"].values())
    return text + (f" [red]{breaches} over[/red]" if breaches else "")


def _sla_table(body: dict[str, Any]) -> Table:
    window = body["window"]
    table = Table(title=f"latency p50/p95/p99, {window['since']} to {window['until']}")
    for column in [*body["by"], "wait", "run", "end to end"]:
        table.add_column(column)
    for group in body["groups"]:
        names = [str(group[d]) for d in body["by"]]
        table.add_row(*names, *(_cell(group[m]) for m in ("wait", "run", "end_to_end")))
    return table


def _factor_param(value: float | None) -> float | None:
    if value is not None and not 1 < value <= 1000:
        raise typer.BadParameter(f"{value} is not above 1 and at most 1000")
    return value


@app.command("fairness")
def fairness_command(
    since: SinceOpt = None,
    until: UntilOpt = None,
    factor: Annotated[
        float | None,
        typer.Option(
            "--factor",
            callback=_factor_param,
            help="Starved when a tenant's wait p95 exceeds the other tenants' in its pool "
            "this many times.",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Each tenant's share of submissions and started attempts per pool; starved tenants."""
    settings = load_settings()

    async def work(readers: Readers) -> int:
        window = report_window(since, until, system_clock().now())
        report = await fairness_from_log(readers.log, readers.policy, window, factor)
        body = report.as_dict()
        if as_json:
            typer.echo(json.dumps(body))
        else:
            Console(width=max(Console().width, 120)).print(_fairness_table(body))
        return 0

    run(lambda: with_readers(settings, work))


def _fairness_table(body: dict[str, Any]) -> Table:
    factor = body["starvation_factor"]
    table = Table(title=f"tenant fairness (starved: wait p95 over {factor}x the other tenants')")
    columns = ("pool", "tenant", "submitted", "started", "wait p95 s", "vs pool", "others p95 s")
    for column in (*columns, ""):
        table.add_column(column)
    for pool in body["pools"]:
        for t in pool["tenants"]:
            table.add_row(
                pool["pool"],
                t["tenant"],
                f"{t['submitted']} ({_percent(t['submitted_share'])})",
                f"{t['started']} ({_percent(t['started_share'])})",
                str(t["wait_p95"]),
                "–" if t["wait_p95_ratio"] is None else f"{t['wait_p95_ratio']}x",
                str(t["others_wait_p95"] if t["others_wait_p95"] is not None else "–"),
                "[red]starved[/red]" if t["starved"] else "",
            )
    return table


def _percent(share: float | None) -> str:
    return "–" if share is None else f"{share:.0%}"

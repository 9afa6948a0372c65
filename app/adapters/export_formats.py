"""Writers for exports (JSON Lines, CSV, Parquet) and the failure report's HTML page.

Writers take rows batch by batch and keep nothing between batches: JSON Lines and CSV write each
row as it comes; Parquet writes each batch as one row group (pyarrow), so memory is one batch.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

from rich.table import Table
from rich.text import Text

from app.ports import Column

if TYPE_CHECKING:
    from jinja2 import Template

FORMATS = ("jsonl", "csv", "parquet")


class RowWriter(Protocol):
    """Streams rows (flat JSON-ready mappings) to a binary output."""

    def write(self, rows: Sequence[Mapping[str, Any]]) -> None: ...

    def close(self) -> None:
        """Finish the output (the Parquet footer) without closing the stream itself."""
        ...


def open_writer(fmt: str, out: BinaryIO, columns: Sequence[Column]) -> RowWriter:
    """A writer of ``fmt`` (jsonl, csv or parquet) on ``out``; ValueError for another format."""
    if fmt == "jsonl":
        return JsonLinesWriter(out)
    if fmt == "csv":
        return CsvWriter(out, columns)
    if fmt == "parquet":
        return ParquetWriter(out, columns)
    raise ValueError(f"unknown format {fmt!r} (use one of {', '.join(FORMATS)})")


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


class JsonLinesWriter:
    """One JSON object per line, exactly the row given (nested values stay nested)."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out

    def write(self, rows: Sequence[Mapping[str, Any]]) -> None:
        self._out.write(b"".join(_compact(row).encode() + b"\n" for row in rows))

    def close(self) -> None:
        self._out.flush()


def _cell(value: Any, kind: str) -> str:
    if value is None:
        return ""
    if kind == "json":
        return _compact(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return value.isoformat() if isinstance(value, datetime) else str(value)


class CsvWriter:
    """A header row of column names, then one row per record; nested values as JSON text."""

    def __init__(self, out: BinaryIO, columns: Sequence[Column]) -> None:
        self._columns = list(columns)
        self._text = io.TextIOWrapper(out, encoding="utf-8", newline="", write_through=True)
        self._csv = csv.writer(self._text)
        self._csv.writerow([c.name for c in self._columns])

    def write(self, rows: Sequence[Mapping[str, Any]]) -> None:
        self._csv.writerows([_cell(row.get(c.name), c.kind) for c in self._columns] for row in rows)

    def close(self) -> None:
        self._text.flush()
        self._text.detach()  # leave the underlying stream open (it may be standard output)


def _instant(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


class ParquetWriter:
    """Typed columns (timestamps in UTC, nested values as JSON text), one row group per batch."""

    def __init__(self, out: BinaryIO, columns: Sequence[Column]) -> None:
        import pyarrow as pa  # type: ignore[import-untyped]  # no stubs; imported only when used
        import pyarrow.parquet as pq  # type: ignore[import-untyped]

        self._pa = pa
        self._columns = list(columns)
        types = {
            "str": pa.string(),
            "json": pa.string(),
            "int": pa.int64(),
            "float": pa.float64(),
            "bool": pa.bool_(),
            "time": pa.timestamp("us", tz="UTC"),
        }
        self._schema = pa.schema([(c.name, types[c.kind]) for c in self._columns])
        self._writer = pq.ParquetWriter(out, self._schema, compression="zstd")

    def write(self, rows: Sequence[Mapping[str, Any]]) -> None:
        if not rows:
            return
        arrays = [
            self._pa.array([self._value(row.get(c.name), c.kind) for row in rows], type=field.type)
            for c, field in zip(self._columns, self._schema, strict=True)
        ]
        self._writer.write_batch(self._pa.record_batch(arrays, schema=self._schema))

    @staticmethod
    def _value(value: Any, kind: str) -> Any:
        if value is None:
            return None
        if kind == "json":
            return _compact(value)
        if kind == "time":
            return _instant(value)
        if kind == "str" and not isinstance(value, str):
            return str(value)
        return value

    def close(self) -> None:
        self._writer.close()


# --- the failure report as a self-contained HTML page (inline CSS and SVG, no scripts) ---------
# The page's markup is the Jinja2 template templates/report.html (package data, autoescaped);
# here the figures are computed and formatted.

_PALETTE = {"fail": "#d9534f", "retry": "#f0ad4e", "ok": "#3c8dbc", "dead": "#6f42c1"}
_ROW_HEIGHT, _LABEL_WIDTH, _BAR_WIDTH = 24, 190, 300


@dataclass(frozen=True, slots=True)
class _Bar:
    label: str
    note: str
    y: int
    width: float

    @property
    def short(self) -> str:
        return self.label if len(self.label) <= 26 else self.label[:25] + "…"


@dataclass(frozen=True, slots=True)
class _Chart:
    """A horizontal bar chart (its markup is in templates/report.html)."""

    title: str
    bars: tuple[_Bar, ...]
    color: str

    @property
    def height(self) -> int:
        return _ROW_HEIGHT * len(self.bars) + 6


def _bars(title: str, items: Sequence[tuple[str, float, str]], color: str, unit: float) -> _Chart:
    """A chart of (label, value, note) items; ``unit`` is the value of a full bar."""
    bars = tuple(
        _Bar(label, note, i * _ROW_HEIGHT + 4, _bar_width(value, unit))
        for i, (label, value, note) in enumerate(items)
    )
    return _Chart(title, bars, color)


def _bar_width(value: float, unit: float) -> float:
    if unit <= 0 or not value:
        return 0
    return max(1.0, _BAR_WIDTH * value / unit)


def _rate_chart(dimension: str, groups: Mapping[str, Mapping[str, Any]]) -> _Chart:
    items = [
        (
            name,
            float(g["failure_rate"]),
            f"{g['failure_rate']:.1%} of {g['attempts']} attempts, {g['retry_rate']:.0%} retried",
        )
        for name, g in list(groups.items())[:15]
    ]
    return _bars(f"Failure rate by {dimension}", items, _PALETTE["fail"], 1.0)


def _count_chart(title: str, counts: Mapping[str, int], color: str) -> _Chart:
    items = [(name, float(n), str(n)) for name, n in list(counts.items())[:15]]
    return _bars(title, items, color, max((n for _, n, _ in items), default=0))


def _cards(report: Mapping[str, Any]) -> list[tuple[str, object]]:
    overall, ttc = report["overall"], report["time_to_completion_seconds"]
    per_job = report["attempts_per_completed_job"]
    return [
        ("jobs", report["jobs"]),
        ("events", report["events"]),
        ("attempts ended", overall["attempts"]),
        ("failure rate", f"{overall['failure_rate']:.1%}"),
        ("retry rate", f"{overall['retry_rate']:.1%}"),
        ("completed jobs", per_job["jobs"]),
        ("attempts per completed job", per_job["mean"] if per_job["mean"] is not None else "–"),
        ("p50 / p90 / p99 to complete (s)", f"{ttc['p50']} / {ttc['p90']} / {ttc['p99']}"),
        ("dead letters", sum(report["dead_letter_reasons"].values())),
        ("anomalies", sum(report["anomalies"].values())),
    ]


def _scaled(title: str, items: list[tuple[str, float, str]], color: str) -> _Chart:
    return _bars(title, items, color, max((v for _, v, _ in items), default=0))


def _charts(report: Mapping[str, Any]) -> list[_Chart]:
    errors = [
        (code, float(e["failures"]), f"{e['failures']} ({e['share']:.0%}), {e['retried']} retried")
        for code, e in list(report["errors"].items())[:15]
    ]
    ttc = report["time_to_completion_seconds"]
    times = [(q, float(ttc[q]), f"{ttc[q]} s") for q in ("p50", "p90", "p99", "max") if ttc[q]]
    histogram = report["attempts_per_completed_job"]["histogram"]
    per_job = {f"{n} attempt(s)": c for n, c in histogram.items()}
    return [
        *(_rate_chart(dim, groups) for dim, groups in report["by"].items()),
        _scaled("Failures by error code", errors, _PALETTE["fail"]),
        _scaled("Time to completion", times, _PALETTE["ok"]),
        _count_chart("Attempts per completed job", per_job, _PALETTE["ok"]),
        _count_chart("Dead-letter reasons", report["dead_letter_reasons"], _PALETTE["dead"]),
        _count_chart(
            "Lease expiries by job type", report["lease_expiries_by_job_type"], _PALETTE["retry"]
        ),
        _count_chart(
            "TTL expiries by job type", report["ttl_expiries_by_job_type"], _PALETTE["retry"]
        ),
        _count_chart("Anomalies by kind", report["anomalies"], _PALETTE["retry"]),
    ]


@cache
def _report_template() -> Template:
    # Imported here: the CLI's other commands do not pay for Jinja2 (about 40 ms).
    from jinja2 import Environment, PackageLoader

    env = Environment(
        loader=PackageLoader("app.adapters", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    return env.get_template("report.html")


def html_report(report: Mapping[str, Any]) -> str:
    """The failure report (``FailureReport.as_dict()``) as one self-contained HTML page."""
    window = report["window"]
    return _report_template().render(
        span=f"{window['since'] or 'the beginning'} to {window['until'] or 'now'}",
        cards=_cards(report),
        charts=_charts(report),
        label_width=_LABEL_WIDTH,
        bar_width=_BAR_WIDTH,
    )


# --- the reports as rich tables ----------------------------------------------------------------


def _table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> Table:
    table = Table(title=title, title_justify="left", min_width=len(title) + 2)
    for i, header in enumerate(headers):
        table.add_column(header, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*(str(cell) for cell in row))
    return table


def _group_row(name: str, g: Mapping[str, Any]) -> list[Any]:
    return [
        name,
        g["attempts"],
        g["completed"],
        g["failed"],
        g["lease_expired"],
        f"{g['failure_rate']:.1%}",
        f"{g['retried']} ({g['retry_rate']:.0%})",
    ]


def failure_tables(report: Mapping[str, Any]) -> list[Table]:
    """The failure report (``FailureReport.as_dict()``) as rich tables."""
    overall, ttc = report["overall"], report["time_to_completion_seconds"]
    per_job = report["attempts_per_completed_job"]
    summary = [
        ["jobs / events", f"{report['jobs']} / {report['events']}"],
        ["attempts ended", overall["attempts"]],
        ["failure rate", f"{overall['failure_rate']:.1%}"],
        ["retry rate", f"{overall['retry_rate']:.1%}"],
        ["completed jobs", per_job["jobs"]],
        ["attempts per completed job", per_job["mean"]],
        ["time to completion p50/p90/p99 (s)", f"{ttc['p50']} / {ttc['p90']} / {ttc['p99']}"],
    ]
    tables = [_table("Summary", ["", "value"], summary)]
    headers = ["attempts", "completed", "failed", "lease expired", "failure rate", "retried"]
    for dimension, groups in report["by"].items():
        rows = [_group_row(name, g) for name, g in list(groups.items())[:20]]
        tables.append(_table(f"By {dimension}", [dimension, *headers], rows))
    errors = [
        [code, e["failures"], f"{e['share']:.1%}", e["retried"], e["dead_lettered"]]
        for code, e in report["errors"].items()
    ]
    tables.append(
        _table("By error code", ["error", "failures", "share", "retried", "dead-lettered"], errors)
    )
    for title, key in (
        ("Dead-letter reasons", "dead_letter_reasons"),
        ("Lease expiries by job type", "lease_expiries_by_job_type"),
        ("TTL expiries by job type", "ttl_expiries_by_job_type"),
        ("Anomalies by kind", "anomalies"),
    ):
        tables.append(_table(title, ["", "count"], [[k, v] for k, v in report[key].items()]))
    return tables


_WHATIF_ROWS = (
    ("jobs", "jobs"),
    ("completed", "completed"),
    ("dead-lettered", "dead_lettered"),
    ("expired (TTL)", "expired"),
    ("cancelled", "cancelled"),
    ("still live", "live"),
    ("jobs retried at least once", "jobs_retried"),
    ("retries", "retried"),
    ("reroutes", "rerouted"),
    ("lease expiries", "lease_expiries"),
    ("total cooldown (s)", "cooldown_seconds"),
    ("mean time to completion (s)", "mean_completion_seconds"),
    ("anomalies", "anomalies"),
)


def _delta(real: float | None, simulated: float | None) -> str:
    if real is None or simulated is None:  # a mean of nothing (no job completed)
        return "=" if real == simulated else "-"
    change = simulated - real
    if change == 0:
        return "="
    return f"{change:+.3f}".rstrip("0").rstrip(".") if isinstance(change, float) else f"{change:+d}"


def whatif_tables(report: Mapping[str, Any], name: str) -> list[Table | Text]:
    """The what-if report (``WhatIfReport.as_dict()``) side by side, then the changed jobs."""
    real, sim = report["real"], report["simulated"]
    rows = [
        [label, real[key], sim[key], _delta(real[key], sim[key])] for label, key in _WHATIF_ROWS
    ]
    real_reasons, sim_reasons = real["dead_letter_reasons"], sim["dead_letter_reasons"]
    for reason in sorted(set(real_reasons) | set(sim_reasons)):
        got, would = real_reasons.get(reason, 0), sim_reasons.get(reason, 0)
        rows.append([f"  dead-lettered: {reason}", got, would, _delta(got, would)])
    real_pools, sim_pools = real["attempts_by_pool"], sim["attempts_by_pool"]
    for pool in sorted(set(real_pools) | set(sim_pools)):
        got, would = real_pools.get(pool, 0), sim_pools.get(pool, 0)
        rows.append([f"  attempts on {pool}", got, would, _delta(got, would)])
    headers = ["", "really", f"under {name}", "change"]
    parts: list[Table | Text] = [_table(f"As of {report['as_of']}", headers, rows)]
    changed = f"{report['jobs_changed']} of {real['jobs']} jobs would have been decided differently"
    parts.append(Text(changed))
    for change in report["examples"]:
        really = ", ".join(change["real_decisions"]) or "-"
        would = ", ".join(change["simulated_decisions"]) or "-"
        parts.append(
            Text(
                f"  {change['job_id']}: {change['real_status']} -> {change['simulated_status']}; "
                f"really {really}; would {would}"
            )
        )
    return parts

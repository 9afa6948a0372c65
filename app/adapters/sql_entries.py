"""Reading ``jobtrail_events`` rows back as stored entries, checked (app/adapters/sql_log.py).

SQLite columns hold values of any type, so what ``verify`` reads is held to the form the log
writes: instants as the text SQLAlchemy stores, anything else left as found for the chain check
to report. On PostgreSQL, each job's entries are read through the (job_id, seq) index.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Row, Text, text, type_coerce
from sqlalchemy.sql.selectable import TextualSelect

from app.adapters.log_entries import raw_entry
from app.domain.chain import MICROSECOND, StoredEvent

_SQLITE_INSTANT = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{6}")
"""How SQLAlchemy writes an instant into SQLite (UTC, no offset). SQLite compares this text, not
the instant: another spelling of the same instant would sort elsewhere in time-range queries."""


def sqlite_checked(columns: Sequence[Any]) -> tuple[Any, ...]:
    """SQLite's raw read of ``columns``: its instants as the stored text, so verify can hold
    them to that form."""
    return tuple(
        type_coerce(column, Text).label(column.name) if column.name.endswith("_at") else column
        for column in columns
    )


def _instant(value: object) -> object:
    """A stored instant, aware UTC; text only in the form the log writes (else left as it is)."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if isinstance(value, str) and _SQLITE_INSTANT.fullmatch(value):
        try:
            return datetime.fromisoformat(value).replace(tzinfo=UTC)
        except ValueError:
            return value
    return value


def stored_entry(row: Row[*tuple[Any, ...]]) -> StoredEvent:
    """The entry as stored, every column of it: SQLite columns hold any type, so check them."""
    fields = dict(row._mapping)
    for name in ("occurred_at", "recorded_at"):
        fields[name] = _instant(fields[name])
    return raw_entry(fields, occurred_at_unit=MICROSECOND)


def per_job(columns: Sequence[Any], *, last_only: bool = False) -> TextualSelect:
    """PostgreSQL: each job's entries (or its last) through the (job_id, seq) index, one job at a
    time. The ``IN`` form leaves the plan to the statistics, and on a table never analyzed (a
    fresh log, autovacuum off) PostgreSQL reads the whole table for every batch."""
    names = ", ".join(f"e.{column.name}" for column in columns)
    order = "e.seq DESC LIMIT 1" if last_only else "e.seq"
    sql = (  # column names from the table definition: no outside text
        "SELECT t.* FROM unnest(CAST(:ids AS text[])) AS j(job_id) "  # noqa: S608
        f"CROSS JOIN LATERAL (SELECT {names} FROM jobtrail_events AS e "
        f'WHERE e.job_id = j.job_id COLLATE "C" ORDER BY {order}) AS t '
        "ORDER BY t.job_id, t.seq"
    )
    return text(sql).columns(*columns)


def per_job_from(columns: Sequence[Any]) -> TextualSelect:
    """PostgreSQL: each job's entries from its own first seq on, through the (job_id, seq) index
    (as ``per_job``)."""
    names = ", ".join(f"e.{column.name}" for column in columns)
    sql = (  # column names from the table definition: no outside text
        "SELECT t.* FROM unnest(CAST(:ids AS text[]), CAST(:seqs AS integer[])) "  # noqa: S608
        "AS j(job_id, seq) "
        f"CROSS JOIN LATERAL (SELECT {names} FROM jobtrail_events AS e "
        f'WHERE e.job_id = j.job_id COLLATE "C" AND e.seq >= j.seq ORDER BY e.seq) AS t '
        "ORDER BY t.job_id, t.seq"
    )
    return text(sql).columns(*columns)

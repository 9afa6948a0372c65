"""Exports and time-ordered replays of the log, in constant memory.

``replay`` pages through the log's ``scan_range`` (on its ``recorded_at`` index), so a window
costs what it holds, not a scan of the whole log.
"""

from __future__ import annotations

import typing
from collections.abc import AsyncIterator
from dataclasses import dataclass, fields

from app.domain.chain import RecordedEvent
from app.domain.events import JobEvent
from app.ports import Column, EventLog, JobRow
from app.services.analysis import Window

_LOG_COLUMNS = (
    Column("seq", "int"),
    Column("recorded_at", "time"),
    Column("hash", "str"),
    Column("prev_hash", "str"),
)
_EVENT_KINDS = {
    "version": "int",
    "attempt": "int",
    "max_attempts": "int",
    "reroute_after_failures": "int",
    "duration_ms": "int",
    "ttl_seconds": "float",
    "lease_seconds": "float",
    "retryable": "bool",
    "occurred_at": "time",
    "payload": "json",
    "retry": "json",
    "fallback_pools": "json",
    "routing": "json",
}


def _event_field_names() -> list[str]:
    """Every field of every event type, in lifecycle order, each once."""
    union = typing.get_args(JobEvent)[0]
    names: dict[str, None] = {}
    for model in typing.get_args(union):
        names.update(dict.fromkeys(model.model_fields))
    return list(names)


def _job_kind(annotation: object) -> str:
    text = str(annotation)
    if "datetime" in text:
        return "time"
    return "int" if text.startswith("int") else "str"


EVENT_COLUMNS: tuple[Column, ...] = _LOG_COLUMNS + tuple(
    Column(name, _EVENT_KINDS.get(name, "str")) for name in _event_field_names()
)
"""The flat event (``jobtrail history --json`` entry) as columns."""

JOB_COLUMNS: tuple[Column, ...] = tuple(Column(f.name, _job_kind(f.type)) for f in fields(JobRow))
"""A job row of the projection as columns."""


@dataclass(frozen=True, slots=True)
class Selection:
    """Which events a replay yields: recorded in the window, of one job and these types if given."""

    window: Window
    job_id: str | None = None
    types: frozenset[str] = frozenset()


async def replay(log: EventLog, selection: Selection) -> AsyncIterator[RecordedEvent]:
    """The selected events in (recorded_at, job_id, seq) order, in bounded memory."""
    if selection.job_id is not None:
        history = await log.read_job(selection.job_id)
        for recorded in sorted(history, key=lambda r: (r.recorded_at, r.seq)):
            if recorded.recorded_at in selection.window and _typed(recorded.event, selection):
                yield recorded
        return
    async for recorded in log.scan_range(selection.window.since, selection.window.until):
        if _typed(recorded.event, selection):
            yield recorded


def _typed(event: JobEvent, selection: Selection) -> bool:
    return not selection.types or event.type in selection.types

"""Exports and time-ordered replays of the log, in constant memory.

The log's port scans in (job_id, seq) order only, so ``replay`` filters that scan by the time
window and sorts what it keeps externally: sorted runs of at most ``run_size`` entries are spilled
to a private temporary folder and merged. Memory stays bounded whatever the window holds; disk
holds the window's entries once. A log method scanning by ``recorded_at`` (on its index) would
make the spill unnecessary.
"""

from __future__ import annotations

import heapq
import tempfile
import typing
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path

from app.domain.chain import RecordedEvent, StoredEvent
from app.domain.events import JobEvent, as_utc, parse_event
from app.ports import EventLog, JobRow
from app.services.analysis import Window

DEFAULT_RUN_SIZE = 50_000
"""Entries sorted in memory before a run is spilled to disk."""
_SEP = b"\t"


@dataclass(frozen=True, slots=True)
class Column:
    """One exported column: its name and kind (str, int, float, bool, time or json)."""

    name: str
    kind: str


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


async def replay(
    log: EventLog,
    selection: Selection,
    *,
    run_size: int = DEFAULT_RUN_SIZE,
    spill_dir: Path | None = None,
) -> AsyncIterator[RecordedEvent]:
    """The selected events in (recorded_at, job_id, seq) order, in bounded memory."""
    if selection.job_id is not None:
        history = await log.read_job(selection.job_id)
        for recorded in sorted(history, key=lambda r: (r.recorded_at, r.seq)):
            if recorded.recorded_at in selection.window and _typed(recorded.event, selection):
                yield recorded
        return
    with tempfile.TemporaryDirectory(prefix="jobtrail-replay-", dir=spill_dir) as folder:
        runs = SortedRuns(Path(folder), run_size)
        async for entry in log.scan_raw():
            if entry.recorded_at in selection.window and (
                not selection.types or _typed(parse_event(entry.data), selection)
            ):
                runs.add(sort_line(entry))
        for line in runs.merged():
            yield decode_line(line)


def _typed(event: JobEvent, selection: Selection) -> bool:
    return not selection.types or event.type in selection.types


def sort_line(entry: StoredEvent) -> bytes:
    """One entry as a line whose bytes sort as (recorded_at, job_id, seq).

    The fixed-width UTC time comes first; a tab (below every job-id character) ends the job id;
    the seq is zero-padded. Canonical JSON never holds a raw tab or newline.
    """
    fields_ = (
        as_utc(entry.recorded_at),
        entry.job_id,
        f"{entry.seq:012d}",
        entry.prev_hash,
        entry.hash,
        entry.data,
    )
    return "\t".join(fields_).encode() + b"\n"


def decode_line(line: bytes) -> RecordedEvent:
    """The entry a ``sort_line`` holds, decoded."""
    at, _job_id, seq, prev_hash, digest, data = line.rstrip(b"\n").split(_SEP, 5)
    return RecordedEvent(
        seq=int(seq),
        recorded_at=datetime.fromisoformat(at.decode()),
        prev_hash=prev_hash.decode(),
        hash=digest.decode(),
        event=parse_event(data),
    )


class SortedRuns:
    """An external merge sort of byte lines: sorted runs spilled to ``folder``, merged lazily."""

    def __init__(self, folder: Path, run_size: int) -> None:
        if run_size < 1:
            raise ValueError("run_size must be at least 1")
        self._folder = folder
        self._run_size = run_size
        self._buffer: list[bytes] = []
        self.runs: list[Path] = []

    def add(self, line: bytes) -> None:
        self._buffer.append(line)
        if len(self._buffer) >= self._run_size:
            self._spill()

    def _spill(self) -> None:
        self._buffer.sort()
        path = self._folder / f"run-{len(self.runs):06d}"
        with path.open("wb") as out:
            out.writelines(self._buffer)
        self.runs.append(path)
        self._buffer = []

    def merged(self) -> Iterator[bytes]:
        """Every line added, in byte order."""
        if not self.runs:
            self._buffer.sort()
            yield from self._buffer
            return
        if self._buffer:
            self._spill()
        files = [path.open("rb") for path in self.runs]
        try:
            yield from heapq.merge(*files)
        finally:
            for handle in files:
                handle.close()

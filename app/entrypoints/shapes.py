"""The flat JSON shapes the CLI's ``--json`` and the HTTP API share.

Plain dicts of JSON values, built without FastAPI, so the CLI prints exactly what the API
answers without loading it.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Any

from app.domain.chain import RecordedEvent
from app.ports import JobRow


def flat_event(recorded: RecordedEvent) -> dict[str, Any]:
    """One history entry as a flat JSON object: log fields, then the event's own fields."""
    entry: dict[str, Any] = {
        "seq": recorded.seq,
        "recorded_at": recorded.recorded_at.isoformat(),
        "hash": recorded.hash,
        "prev_hash": recorded.prev_hash,
    }
    entry |= recorded.event.model_dump(mode="json")
    return entry


def row_json(row: JobRow) -> dict[str, Any]:
    """A job row as JSON: ISO-8601 instants, nulls kept (the API's and ``jobs --json``'s shape)."""
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in asdict(row).items()}

"""The job snapshots kept in the ``jobs`` table (0007): written with the row, read by trackers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from app.adapters.sql_models import jobs
from app.ports import JobSnapshot

_c = jobs.c


def snapshot_values(snapshot: JobSnapshot | None) -> dict[str, Any]:
    """The snapshot's columns of a job row (all None without one: the row's old one goes)."""
    if snapshot is None:
        return {"snapshot": None, "snapshot_seq": None, "snapshot_hash": None}
    return {"snapshot": snapshot.body, "snapshot_seq": snapshot.seq, "snapshot_hash": snapshot.hash}


async def read_snapshots(conn: AsyncConnection, job_ids: Sequence[str]) -> dict[str, JobSnapshot]:
    """The snapshots of those of ``job_ids`` (one IN list's worth) that have one."""
    query = select(_c.job_id, _c.snapshot_seq, _c.snapshot_hash, _c.snapshot).where(
        _c.job_id.in_(job_ids), _c.snapshot.is_not(None)
    )
    return {
        row.job_id: JobSnapshot(row.snapshot_seq, row.snapshot_hash, row.snapshot)
        for row in await conn.execute(query)
    }

"""``JobQueries`` by scanning any ProjectionStore (the in-memory fake in service tests).

It reads only through the store's public port (``all_jobs``, ``get_attempts``), so it answers
exactly what the SQL adapter answers for the same rows, at the cost of a full scan per query.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

from app.ports import (
    EndedCount,
    GroupCount,
    JobFilter,
    JobRow,
    LatencyRow,
    PageKey,
    ProjectionStore,
)


def _matches(row: JobRow, filters: JobFilter, after: PageKey | None) -> bool:
    if row.updated_at is None:
        return False
    if any(getattr(row, name) != value for name, value in filters.equalities().items()):
        return False
    if filters.updated_since is not None and row.updated_at < filters.updated_since:
        return False
    if filters.updated_until is not None and row.updated_at >= filters.updated_until:
        return False
    return after is None or (row.updated_at, row.job_id) < (after.updated_at, after.job_id)


def _minute(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(second=0, microsecond=0)


def _in(at: datetime | None, since: datetime, until: datetime) -> bool:
    return at is not None and since <= at < until


class InMemoryJobQueries:
    """Answers the read queries by scanning ``store`` (for tests and tiny data sets only)."""

    def __init__(self, store: ProjectionStore) -> None:
        self._store = store

    async def list_jobs(
        self, filters: JobFilter, *, limit: int, after: PageKey | None
    ) -> list[JobRow]:
        """Up to ``limit`` matching rows after ``after``, by updated_at desc then job_id desc."""
        rows = [row async for row in self._store.all_jobs() if _matches(row, filters, after)]
        rows.sort(key=lambda row: (row.updated_at, row.job_id), reverse=True)
        return rows[:limit]

    async def count_jobs(self) -> list[GroupCount]:
        """Job counts grouped by (queue, status)."""
        counts = Counter([(row.queue, row.status) async for row in self._store.all_jobs()])
        return [GroupCount(queue, status, n) for (queue, status), n in counts.items()]

    async def attempts_ended(self, since: datetime, until: datetime) -> list[EndedCount]:
        """Attempts with ``since <= ended_at < until``, counted per minute and outcome."""
        counts: Counter[tuple[datetime, str]] = Counter()
        async for row in self._store.all_jobs():
            for attempt in await self._store.get_attempts(row.job_id):
                ended, outcome = attempt.ended_at, attempt.outcome
                if ended is not None and outcome is not None and since <= ended < until:
                    counts[_minute(ended), outcome] += 1
        return [EndedCount(minute, outcome, n) for (minute, outcome), n in counts.items()]

    async def latency_rows(self, since: datetime, until: datetime) -> list[LatencyRow]:
        """Attempts reserved or ended in ``[since, until)``, with their job's kind and tenant."""
        found = []
        async for job in self._store.all_jobs():
            for attempt in await self._store.get_attempts(job.job_id):
                if _in(attempt.reserved_at, since, until) or _in(attempt.ended_at, since, until):
                    found.append(LatencyRow.of(job, attempt))
        return found

    async def ping(self) -> None:
        """Always answers."""

    async def close(self) -> None:
        """Nothing to release."""

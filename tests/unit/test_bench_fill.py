"""The benchmark's slice-by-slice log fill (for the memory figure over millions of events)."""

from __future__ import annotations

from app.adapters.memory_log import InMemoryEventLog
from app.bench.offline import fill_log_in_slices


async def test_a_log_is_filled_in_slices_of_distinct_jobs() -> None:
    log = InMemoryEventLog()
    await fill_log_in_slices(log, 1_000, size=300)  # slices of 300, 300, 300 and 100
    assert await log.count() == 1_000
    jobs = {entry.job_id async for entry in log.scan_raw()}
    assert len(jobs) == 100 * 3 + 34, "no job of one slice is reused by another"

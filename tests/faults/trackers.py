"""What the scenarios with several trackers share: starting them, their process figures, the check.

tests/faults/test_multi_tracker_kills.py and tests/faults/test_rabbit_cluster.py each run three
``jobtrail serve`` processes over one PostgreSQL log and projection database, end them the same
way and hold the same figures to zero.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.faults.conftest import SCALE, FaultTracker, make_env

MARKS = [pytest.mark.faults, pytest.mark.timeout(SCALE.test_timeout)]
"""Every such scenario is part of the fault suite, bounded by its scale's time."""

EVERY_RUN_ZERO = (
    "lost", "duplicated", "gaps", "mismatched", "unsettled_jobs", "anomalies", "quarantined",
    "crashes", "tracebacks", "verify_exit",
)  # fmt: skip
"""What every such run holds to zero: the log and projections intact, every job settled, no
crash or Jobtrail traceback, ``jobtrail verify`` exit 0."""


def build_trackers(
    build: Callable[[dict[str, str]], FaultTracker],
    workdir: Path,
    rabbit_urls: Sequence[str],
    log_url: str,
    sql_url: str,
) -> list[FaultTracker]:
    """One tracker (not started) per broker URL, each in ``workdir/env-<n>``, sharing the log
    and the projections."""
    trackers = []
    for n, rabbit_url in enumerate(rabbit_urls):
        home = workdir / f"env-{n}"
        home.mkdir()
        trackers.append(build(make_env(rabbit_url, log_url, sql_url, home)))
    return trackers


def start_all(trackers: Sequence[FaultTracker]) -> None:
    """Start the first tracker (it migrates the databases), then the others together: a start
    takes 10-30 s on a busy machine, so one after the other costs a minute more."""
    trackers[0].start()
    with ThreadPoolExecutor(max_workers=len(trackers)) as pool:
        for started in [pool.submit(tracker.start) for tracker in trackers[1:]]:
            started.result()


def process_counts(trackers: Sequence[FaultTracker], exit_codes: Iterable[int]) -> dict[str, int]:
    """Crashes (exits we did not cause, and stops that did not exit 0) and tracebacks by kind."""
    kinds = [t.tracebacks() for t in trackers]
    return {
        "crashes": sum(t.crashes() for t in trackers) + sum(code != 0 for code in exit_codes),
        "tracebacks": sum(k["app"] for k in kinds),
        "amqp_library_tracebacks": sum(k["amqp_library"] for k in kinds),
        "handler_cancelled_tracebacks": sum(k["handler_cancelled"] for k in kinds),
    }


def assert_zero(counts: dict[str, Any], keys: Iterable[str], *context: Any) -> None:
    """Every figure named in ``keys`` is 0 (the message shows all counts and ``context``)."""
    named = tuple(keys)
    assert {k: counts[k] for k in named} == dict.fromkeys(named, 0), (counts, *context)

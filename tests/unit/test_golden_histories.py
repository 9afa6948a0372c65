"""Golden event logs: each must keep folding to its recorded state and replaying its decisions.

Every ``tests/fixtures/histories/<name>.jsonl`` holds one job's log, one entry a line: the event's
fields plus ``seq`` and ``recorded_at``. ``<name>.expected.json`` beside it holds the state the log
folds to. Events from ``source == "jobtrail"`` were decided under ``GOLDEN_POLICY``; re-deciding them
must give the same events byte for byte (a routing plugin's ``routed`` answer is not re-decided:
the republish after it is, from it; ``routing_fallback_before_routed_events`` is a log from before
``routed`` existed, whose republish carries the answer alone). A change of meaning adds an event version and an upcaster;
it never edits these files. Anomalies are the fold's verdict, never stored: a changed
anomaly rule (not an event's meaning) may change an ``expected.json``, never a ``.jsonl``, and its
commit says why (lag stopped counting as ``clock_skew`` in noisy_ttl_expiry).
"""

from __future__ import annotations

import itertools
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from app.domain.chain import GENESIS_HASH, RecordedEvent
from app.domain.decide import JOBTRAIL_SOURCE, decide, deciding_state
from app.domain.events import Routed, as_utc, canonical_json, event_from_dict
from app.domain.machine import fold
from app.domain.policy import Policy
from app.domain.state import JobState

HISTORIES = Path(__file__).parents[1] / "fixtures" / "histories"
NAMES = sorted(path.stem for path in HISTORIES.glob("*.jsonl"))

GOLDEN_POLICY = Policy.from_toml(
    """
    jitter = 0.2

    [defaults]
    max_attempts = 3
    lease_seconds = 120
    ttl_seconds = 3600
    non_retryable_errors = ["invalid_input"]

    [defaults.retry]
    initial_interval_seconds = 10
    backoff_coefficient = 2.0
    max_interval_seconds = 300

    [pools.gpu-a]
    fallback_pools = ["gpu-b", "shared"]
    reroute_after_failures = 2

    [queues]
    "gpu-b.batch" = "inference.gpu-b.batch"
    """
)
"""The policy the golden logs' derived events were decided under; pinned here, not the shipped file."""

REQUIRED = {
    "completed_first_try",
    "retry_then_complete",
    "reroute_to_fallback",
    "retries_exhausted",
    "unknown_job_anomalies",
    "routed_by_plugin",
    "routing_fallback_before_routed_events",
}


def load(name: str) -> list[RecordedEvent]:
    entries = []
    for line in (HISTORIES / f"{name}.jsonl").read_text(encoding="utf-8").splitlines():
        data: dict[str, Any] = json.loads(line)
        seq, recorded_at = data.pop("seq"), datetime.fromisoformat(data.pop("recorded_at"))
        entries.append(
            RecordedEvent(seq, recorded_at, GENESIS_HASH, GENESIS_HASH, event_from_dict(data))
        )
    return entries


def expected(name: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(
        (HISTORIES / f"{name}.expected.json").read_text(encoding="utf-8")
    )
    return result


def summary(state: JobState) -> dict[str, Any]:
    return {
        "status": None if state.status is None else str(state.status),
        "attempt": state.attempt,
        "pool": state.pool,
        "anomalies": len(state.anomalies),
        "anomaly_kinds": [anomaly.kind for anomaly in state.anomalies],
        "last_error_code": state.last_error_code,
        "terminal_reason": state.terminal_reason,
        "last_seq": state.last_seq,
    }


def test_the_required_histories_are_there() -> None:
    assert set(NAMES) >= REQUIRED
    for name in NAMES:
        assert (HISTORIES / f"{name}.expected.json").is_file(), name


@pytest.mark.parametrize("name", NAMES)
def test_the_history_folds_to_its_expected_state(name: str) -> None:
    want = expected(name)
    assert summary(fold(load(name), skew_tolerance=GOLDEN_POLICY.clock_skew_tolerance)) == {
        key: want.get(key) for key in summary(JobState(job_id=""))
    }


@pytest.mark.parametrize("name", NAMES)
def test_every_prefix_of_the_history_folds_the_same_way_incrementally(name: str) -> None:
    entries = load(name)
    for cut in range(1, len(entries)):
        assert fold(entries[cut:], fold(entries[:cut])) == fold(entries)


@pytest.mark.parametrize("name", NAMES)
def test_every_decision_in_the_history_replays_byte_for_byte(name: str) -> None:
    entries = load(name)
    for index, entry in enumerate(entries):
        if entry.event.source != JOBTRAIL_SOURCE or isinstance(entry.event, Routed):
            continue  # a routing plugin's recorded answer is folded, never re-decided
        state = deciding_state(fold(entries[:index]), entry.event)
        again = decide(state, entry.event.occurred_at, GOLDEN_POLICY)
        assert [canonical_json(event) for event in again] == [canonical_json(entry.event)], (
            entry.seq
        )


@pytest.mark.parametrize("name", NAMES)
def test_the_file_is_a_well_formed_log(name: str) -> None:
    """seq counts 1, 2, 3 …, recorded_at never goes back, one job, every line already canonical."""
    entries = load(name)
    assert [entry.seq for entry in entries] == list(range(1, len(entries) + 1))
    assert all(a.recorded_at <= b.recorded_at for a, b in itertools.pairwise(entries))
    assert len({entry.event.job_id for entry in entries}) == 1
    assert len({entry.event.event_id for entry in entries}) == len(entries)
    lines = (HISTORIES / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
    for line, entry in zip(lines, entries, strict=True):
        data = json.loads(line)
        assert data.pop("recorded_at") == as_utc(entry.recorded_at)
        data.pop("seq")
        assert json.dumps(
            data, sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ) == canonical_json(entry.event)

"""Failure analysis: one streaming pass over the log into bounded counters and a quantile sketch.

Each job is folded event by event; every accepted transition counts once (an attempt completed,
failed, lost its lease, was retried; a job was dead-lettered or expired), attributed to the
attempt's node, pool, queue and the job's model. Only events recorded inside the window count;
the events before it still give each job its state. Memory is one job's history plus counters.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from app.domain.chain import RecordedEvent
from app.domain.events import (
    Completed,
    DeadLettered,
    Expired,
    ExpiryReason,
    Failed,
    Rerouted,
    Retried,
)
from app.domain.machine import LEASE_EXPIRED_CODE, evolve
from app.domain.policy import Policy
from app.domain.state import JobState, JobStatus
from app.ports import EventLog
from app.services.rebuild import job_histories

DIMENSIONS = ("node", "pool", "model", "queue")
MAX_GROUPS = 5000
"""Distinct values kept per dimension; the rest are counted under ``OTHER``."""
OTHER = "(other)"
EXACT_UP_TO = 10_000
"""Completion times kept exactly before the quantile sketch alone answers."""
NONE = "(none)"


@dataclass(frozen=True, slots=True)
class Window:
    """Events recorded in [since, until); either end may be open."""

    since: datetime | None = None
    until: datetime | None = None

    def __contains__(self, moment: datetime) -> bool:
        if self.since is not None and moment < self.since:
            return False
        return self.until is None or moment < self.until


class Quantiles:
    """Exact quantiles of the first ``exact_up_to`` values, then a log-bucketed sketch.

    The sketch (DDSketch-like) answers within ``accuracy`` relative error in bounded memory.
    """

    def __init__(self, accuracy: float = 0.005, exact_up_to: int = EXACT_UP_TO) -> None:
        self._exact: list[float] | None = []
        self._exact_up_to = exact_up_to
        self._gamma = (1 + accuracy) / (1 - accuracy)
        self._log_gamma = math.log(self._gamma)
        self._buckets: Counter[int] = Counter()
        self._zeros = 0
        self.count = 0
        self.total = 0.0
        self.minimum: float | None = None
        self.maximum: float | None = None

    def add(self, value: float) -> None:
        """Count one value (values at or below zero count as zero)."""
        value = max(value, 0.0)
        self.count += 1
        self.total += value
        self.minimum = value if self.minimum is None else min(self.minimum, value)
        self.maximum = value if self.maximum is None else max(self.maximum, value)
        if self._exact is not None:
            self._exact.append(value)
            if len(self._exact) > self._exact_up_to:
                self._exact = None
        if value <= 1e-9:
            self._zeros += 1
        else:
            self._buckets[math.ceil(math.log(value) / self._log_gamma)] += 1

    def quantile(self, q: float) -> float | None:
        """The value at quantile ``q`` (0..1), or None when nothing was counted."""
        if self.count == 0:
            return None
        if q >= 1:
            return self.maximum
        rank = q * (self.count - 1)
        if self._exact is not None:
            return sorted(self._exact)[int(rank)]
        seen = self._zeros
        if rank < seen:
            return 0.0
        for index in sorted(self._buckets):
            seen += self._buckets[index]
            if rank < seen:
                estimate = 2 * self._gamma**index / (self._gamma + 1)
                return min(max(estimate, self.minimum or 0.0), self.maximum or estimate)
        return self.maximum

    def summary(self) -> dict[str, float | int | None]:
        """count, mean, p50, p90, p99, min and max (seconds)."""
        mean = self.total / self.count if self.count else None
        return {
            "count": self.count,
            "mean": _round(mean),
            "p50": _round(self.quantile(0.5)),
            "p90": _round(self.quantile(0.9)),
            "p99": _round(self.quantile(0.99)),
            "min": _round(self.minimum),
            "max": _round(self.maximum),
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


@dataclass
class GroupStats:
    """Attempts that ended in one group, and how."""

    attempts: int = 0
    completed: int = 0
    failed: int = 0
    lease_expired: int = 0
    retried: int = 0

    @property
    def failures(self) -> int:
        return self.failed + self.lease_expired

    def as_dict(self) -> dict[str, Any]:
        ended = self.attempts or 1
        return {
            "attempts": self.attempts,
            "completed": self.completed,
            "failed": self.failed,
            "lease_expired": self.lease_expired,
            "retried": self.retried,
            "failure_rate": round(self.failures / ended, 4),
            "retry_rate": round(self.retried / ended, 4),
        }


@dataclass
class ErrorStats:
    """Failures with one error code, and what Jobtrail did next."""

    failures: int = 0
    retried: int = 0
    dead_lettered: int = 0


@dataclass
class FailureReport:
    """Everything ``analyze`` counted; ``as_dict`` is its JSON form."""

    window: Window = field(default_factory=Window)
    jobs: int = 0
    events: int = 0
    event_types: Counter[str] = field(default_factory=Counter)
    overall: GroupStats = field(default_factory=GroupStats)
    groups: dict[str, dict[str, GroupStats]] = field(
        default_factory=lambda: {dimension: {} for dimension in DIMENSIONS}
    )
    errors: dict[str, ErrorStats] = field(default_factory=dict)
    attempts_per_completed: Counter[int] = field(default_factory=Counter)
    completion: Quantiles = field(default_factory=Quantiles)
    dead_letter_reasons: Counter[str] = field(default_factory=Counter)
    lease_expiries_by_job_type: Counter[str] = field(default_factory=Counter)
    ttl_expiries_by_job_type: Counter[str] = field(default_factory=Counter)
    anomalies: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        """The report as one JSON-ready object."""
        completed = sum(self.attempts_per_completed.values())
        attempts = sum(n * c for n, c in self.attempts_per_completed.items())
        return {
            "window": {"since": _iso(self.window.since), "until": _iso(self.window.until)},
            "jobs": self.jobs,
            "events": self.events,
            "event_types": dict(sorted(self.event_types.items())),
            "overall": self.overall.as_dict(),
            "by": {dim: _ranked(groups) for dim, groups in self.groups.items()},
            "errors": _errors(self.errors),
            "attempts_per_completed_job": {
                "jobs": completed,
                "mean": round(attempts / completed, 3) if completed else None,
                "histogram": {
                    str(n): self.attempts_per_completed[n]
                    for n in sorted(self.attempts_per_completed)
                },
            },
            "time_to_completion_seconds": self.completion.summary(),
            "dead_letter_reasons": dict(self.dead_letter_reasons.most_common()),
            "lease_expiries_by_job_type": dict(self.lease_expiries_by_job_type.most_common()),
            "ttl_expiries_by_job_type": dict(self.ttl_expiries_by_job_type.most_common()),
            "anomalies": dict(self.anomalies.most_common()),
        }


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _ranked(groups: dict[str, GroupStats]) -> dict[str, dict[str, Any]]:
    ordered = sorted(groups.items(), key=lambda kv: (-kv[1].failures, -kv[1].attempts, kv[0]))
    return {name: stats.as_dict() for name, stats in ordered}


def _errors(errors: dict[str, ErrorStats]) -> dict[str, dict[str, Any]]:
    total = sum(e.failures for e in errors.values()) or 1
    ordered = sorted(errors.items(), key=lambda kv: (-kv[1].failures, kv[0]))
    return {
        code: {
            "failures": e.failures,
            "share": round(e.failures / total, 4),
            "retried": e.retried,
            "dead_lettered": e.dead_lettered,
        }
        for code, e in ordered
    }


async def analyze(
    log: EventLog,
    policy: Policy,
    window: Window | None = None,
    progress: Callable[[int], None] | None = None,
) -> FailureReport:
    """One pass over the whole log, one job in memory at a time."""
    report = FailureReport(window=window or Window())
    skew = policy.clock_skew_tolerance
    async for history in job_histories(log.scan()):
        analyze_job(report, history, skew)
        if progress is not None:
            progress(len(history))
    return report


def analyze_job(report: FailureReport, history: list[RecordedEvent], skew: timedelta) -> None:
    """Fold one job's history, counting what its in-window events did."""
    state = JobState(job_id=history[0].job_id)
    touched = False
    for recorded in history:
        after = evolve(state, recorded, skew)
        if recorded.recorded_at in report.window:
            touched = True
            _count(report, state, after, recorded)
        state = after
    report.jobs += touched


def _count(
    report: FailureReport, before: JobState, after: JobState, recorded: RecordedEvent
) -> None:
    event = recorded.event
    report.events += 1
    report.event_types[event.type] += 1
    for anomaly in after.anomalies[len(before.anomalies) :]:
        report.anomalies[anomaly.kind] += 1
    if after.status is not before.status:  # a report that changed nothing was only flagged
        _transition(report, before, after, recorded)


def _transition(
    report: FailureReport, before: JobState, after: JobState, recorded: RecordedEvent
) -> None:
    event = recorded.event
    match event:
        case Completed() if after.status is JobStatus.COMPLETED:
            _ended(report, before, event.node_id, "completed")
            report.attempts_per_completed[after.attempt] += 1
            assert after.submitted_at is not None
            report.completion.add((recorded.recorded_at - after.submitted_at).total_seconds())
        case Failed() if after.status is JobStatus.COOLING_DOWN:
            _ended(report, before, event.node_id, "failed")
            _error(report, event.error_code).failures += 1
        case Expired() if event.reason is ExpiryReason.LEASE:
            _ended(report, before, before.node_id, "lease_expired")
            _error(report, LEASE_EXPIRED_CODE).failures += 1
            report.lease_expiries_by_job_type[_job_type(before)] += 1
        case Expired():
            report.ttl_expiries_by_job_type[_job_type(before)] += 1
        case Retried() | Rerouted():
            for stats in _groups(report, before, before.node_id):
                stats.retried += 1
            _error(report, before.last_error_code or NONE).retried += 1
        case DeadLettered():
            report.dead_letter_reasons[str(event.reason)] += 1
            if before.status is JobStatus.COOLING_DOWN:
                _error(report, before.last_error_code or NONE).dead_lettered += 1
        case _:
            pass


def _ended(report: FailureReport, before: JobState, node: str | None, outcome: str) -> None:
    for stats in _groups(report, before, node):
        stats.attempts += 1
        setattr(stats, outcome, getattr(stats, outcome) + 1)


def _groups(report: FailureReport, before: JobState, node: str | None) -> list[GroupStats]:
    model = before.spec.model if before.spec is not None else None
    keys = {"node": node, "pool": before.pool, "model": model, "queue": before.queue}
    found = [report.overall]
    for dimension, key in keys.items():
        groups = report.groups[dimension]
        name = key or NONE
        if name not in groups and len(groups) >= MAX_GROUPS:
            name = OTHER
        found.append(groups.setdefault(name, GroupStats()))
    return found


def _error(report: FailureReport, code: str) -> ErrorStats:
    if code not in report.errors and len(report.errors) >= MAX_GROUPS:
        code = OTHER
    return report.errors.setdefault(code, ErrorStats())


def _job_type(state: JobState) -> str:
    return str(state.spec.job_type) if state.spec is not None else NONE

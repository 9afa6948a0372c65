"""The latency (SLA) and tenant-fairness reports, from the log or from the projection.

Samples (app/services/latency.py) are grouped by any of pool, job type, priority class and
tenant; each group reports count, p50, p95 and p99 of each measure, and counts the samples that
broke their own job's targets (app/domain/sla.py). A group whose samples all share one set of
targets also says whether its quantiles met them. Fairness gives each tenant's share of a pool's
submissions and started attempts, and its wait p95 against the pool's and the other tenants'.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from app.domain.policy import Policy
from app.domain.sla import QUANTILES, Measure, SlaTargets, Targets
from app.ports import EventLog, JobQueries
from app.services.analysis import Quantiles, Window
from app.services.latency import JobFacts, Sample, log_facts, row_samples


class Dimension(StrEnum):
    """What a latency report can be grouped by."""

    POOL = "pool"
    JOB_TYPE = "job_type"
    PRIORITY = "priority"
    TENANT = "tenant"


class Source(StrEnum):
    """Where the figures come from: the log (folded) or the SQL projection (attempt rows)."""

    LOG = "log"
    PROJECTION = "projection"


ALL_DIMENSIONS = tuple(Dimension)
DEFAULT_SPAN = timedelta(hours=1)
"""The window when no ``since`` is given: the hour before ``until``."""
MAX_SPAN = timedelta(days=31)
"""The longest window a report reads (a log report folds every job with an event in it)."""


def report_window(since: datetime | None, until: datetime | None, now: datetime) -> Window:
    """``[since, until)``, ``until`` defaulting to now and ``since`` to an hour before it;
    ValueError for an empty or reversed window, or one over ``MAX_SPAN``."""
    end = until or now
    try:
        start = since or end - DEFAULT_SPAN
    except OverflowError:
        raise ValueError(f"until ({end.isoformat()}) leaves no hour before it") from None
    if start >= end:
        raise ValueError(f"since ({start.isoformat()}) must be before until ({end.isoformat()})")
    if end - start > MAX_SPAN:
        raise ValueError(f"the window is longer than {MAX_SPAN.days} days")
    return Window(start, end)


def parse_by(text: str | None) -> tuple[Dimension, ...]:
    """``pool,tenant`` → the dimensions, in report order; ValueError naming a bad one."""
    if text is None or not text.strip():
        return ALL_DIMENSIONS
    names = [part.strip() for part in text.split(",")]
    unknown = [n for n in names if n not in set(Dimension)]
    if unknown:
        known = ", ".join(ALL_DIMENSIONS)
        raise ValueError(f"cannot group by {unknown[0]!r} (choose among {known})")
    return tuple(d for d in ALL_DIMENSIONS if d in names)


@dataclass
class MeasureStats:
    """One measure of one group: the quantiles, and the samples over their own targets."""

    values: Quantiles = field(default_factory=Quantiles)
    breaches: Counter[str] = field(default_factory=Counter)
    targets: set[Targets] = field(default_factory=set)

    def add(self, seconds: float, targets: Targets) -> None:
        self.values.add(seconds)
        self.targets.add(targets)
        for label, limit in targets:
            self.breaches[label] += seconds > limit

    def as_dict(self) -> dict[str, Any]:
        quantiles = {label: self.values.quantile(q) for label, q in QUANTILES.items()}
        shared = next(iter(self.targets)) if len(self.targets) == 1 else None
        return {
            "count": self.values.count,
            **{label: _round(value) for label, value in quantiles.items()},
            "targets": None if not shared else dict(shared),
            "met": None
            if not shared
            else {label: (quantiles[label] or 0.0) <= limit for label, limit in shared},
            "breaches": dict(sorted((k, v) for k, v in self.breaches.items() if v)),
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


@dataclass
class SlaReport:
    """Latency per group and measure over one window."""

    window: Window
    by: tuple[Dimension, ...]
    source: Source
    groups: dict[tuple[str, ...], dict[Measure, MeasureStats]] = field(default_factory=dict)

    def add(self, sample: Sample, targets: Targets) -> None:
        key = tuple(getattr(sample.key, d) for d in self.by)
        measures = self.groups.setdefault(key, {m: MeasureStats() for m in Measure})
        measures[sample.measure].add(sample.seconds, targets)

    def as_dict(self) -> dict[str, Any]:
        groups = [
            dict(zip(self.by, key, strict=True)) | {m: s.as_dict() for m, s in measures.items()}
            for key, measures in sorted(self.groups.items())
        ]
        breaches = sum(sum(s.breaches.values()) for m in self.groups.values() for s in m.values())
        return {
            "window": _window(self.window),
            "source": self.source,
            "by": list(self.by),
            "breaches": breaches,
            "groups": groups,
        }


def _window(window: Window) -> dict[str, str | None]:
    return {"since": _iso(window.since), "until": _iso(window.until)}


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def sla_report(
    samples: Iterable[Sample],
    policy: Policy,
    window: Window,
    by: Sequence[Dimension] = ALL_DIMENSIONS,
    source: Source = Source.LOG,
) -> SlaReport:
    """Group the samples ending in ``window``, each held to its own job's targets."""
    report = SlaReport(window, tuple(by), source)
    resolved: dict[tuple[str, str], SlaTargets] = {}
    for sample in samples:
        if sample.at not in window:
            continue
        kind = (sample.key.job_type, sample.key.priority)
        if kind not in resolved:
            resolved[kind] = policy.sla_targets(*kind)
        report.add(sample, resolved[kind].of(sample.measure))
    return report


async def sla_from_log(
    log: EventLog, policy: Policy, window: Window, by: Sequence[Dimension] = ALL_DIMENSIONS
) -> SlaReport:
    """The report from the log: every job with an event in the window, folded whole."""
    samples = [
        s
        async for facts in log_facts(log, window, policy.clock_skew_tolerance)
        for s in facts.samples
    ]
    return sla_report(samples, policy, window, by, Source.LOG)


async def sla_from_projection(
    queries: JobQueries, policy: Policy, window: Window, by: Sequence[Dimension] = ALL_DIMENSIONS
) -> SlaReport:
    """The report from the projection's attempt rows reserved or ended in a closed window."""
    samples = await _projection_samples(queries, window)
    return sla_report(samples, policy, window, by, Source.PROJECTION)


async def _projection_samples(queries: JobQueries, window: Window) -> list[Sample]:
    assert window.since is not None and window.until is not None  # report_window closes it
    rows = await queries.latency_rows(window.since, window.until)
    return [s for row in rows for s in row_samples(row)]


async def sla(
    source: Source,
    log: EventLog,
    queries: JobQueries,
    policy: Policy,
    window: Window,
    by: Sequence[Dimension] = ALL_DIMENSIONS,
) -> SlaReport:
    """The report from the chosen source."""
    if source is Source.PROJECTION:
        return await sla_from_projection(queries, policy, window, by)
    return await sla_from_log(log, policy, window, by)


def _quantiles(values: Iterable[float]) -> Quantiles:
    found = Quantiles()
    for value in values:
        found.add(value)
    return found


@dataclass
class FairnessReport:
    """Per pool: each tenant's shares, its wait p95 against the pool's, and whether it is
    starved: its wait p95 over ``starvation_factor`` times the other tenants' in the pool
    (not the pool's own, which a starved majority would drag up with it)."""

    window: Window
    starvation_factor: float
    min_attempts: int
    submitted: dict[str, Counter[str]] = field(default_factory=dict)
    waits: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    def add(self, facts: JobFacts) -> None:
        for submission in facts.submissions:
            if submission.at in self.window:
                pool = self.submitted.setdefault(submission.key.pool, Counter())
                pool[submission.key.tenant] += 1
        for sample in facts.samples:
            if sample.measure is Measure.WAIT and sample.at in self.window:
                tenants = self.waits.setdefault(sample.key.pool, {})
                tenants.setdefault(sample.key.tenant, []).append(sample.seconds)

    def as_dict(self) -> dict[str, Any]:
        names = sorted(self.submitted.keys() | self.waits.keys())
        pools = [self._pool(name) for name in names]
        starved = [
            {"pool": p["pool"]} | {k: t[k] for k in ("tenant", "wait_p95", "others_wait_p95")}
            for p in pools
            for t in p["tenants"]
            if t["starved"]
        ]
        return {
            "window": _window(self.window),
            "starvation_factor": self.starvation_factor,
            "min_attempts": self.min_attempts,
            "starved": starved,
            "pools": pools,
        }

    def _pool(self, name: str) -> dict[str, Any]:
        submitted = self.submitted.get(name, Counter())
        waits = self.waits.get(name, {})
        everyone = _quantiles(v for values in waits.values() for v in values)
        rows = [
            self._row(name, tenant, everyone) for tenant in sorted(submitted.keys() | waits.keys())
        ]
        return {
            "pool": name,
            "submitted": submitted.total(),
            "started": everyone.count,
            "wait_p95": _round(everyone.quantile(0.95)),
            "tenants": rows,
        }

    def _row(self, pool: str, tenant: str, everyone: Quantiles) -> dict[str, Any]:
        submitted = self.submitted.get(pool, Counter())
        waits = self.waits.get(pool, {})
        own = _quantiles(waits.get(tenant, []))
        others = _quantiles(v for t, values in waits.items() if t != tenant for v in values)
        p95, pool_p95, others_p95 = (q.quantile(0.95) for q in (own, everyone, others))
        ratio = None if p95 is None or not pool_p95 else p95 / pool_p95
        starved = (
            p95 is not None
            and others_p95 is not None
            and p95 > self.starvation_factor * others_p95
            and own.count >= self.min_attempts
        )
        return {
            "tenant": tenant,
            "submitted": submitted[tenant],
            "submitted_share": _share(submitted[tenant], submitted.total()),
            "started": own.count,
            "started_share": _share(own.count, everyone.count),
            "wait_p95": _round(p95),
            "wait_p95_ratio": _round(ratio),
            "others_wait_p95": _round(others_p95),
            "starved": starved,
        }


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


async def fairness_from_log(
    log: EventLog, policy: Policy, window: Window, starvation_factor: float | None = None
) -> FairnessReport:
    """The fairness report from the log; the factor defaults to the policy's ``[fairness]``."""
    rule = policy.document.fairness
    factor = starvation_factor if starvation_factor is not None else rule.starvation_factor
    report = FairnessReport(window, factor, rule.min_attempts)
    async for facts in log_facts(log, window, policy.clock_skew_tolerance):
        report.add(facts)
    return report


OVERVIEW_BY = (Dimension.POOL, Dimension.PRIORITY)


async def latency_overview(
    queries: JobQueries, policy: Policy, window: Window
) -> tuple[SlaReport, FairnessReport]:
    """The dashboard's panel from one read of the projection: latency by pool and priority,
    and the tenants starved by their waits (submission shares are the log report's)."""
    samples = await _projection_samples(queries, window)
    latency = sla_report(samples, policy, window, OVERVIEW_BY, Source.PROJECTION)
    rule = policy.document.fairness
    fairness = FairnessReport(window, rule.starvation_factor, rule.min_attempts)
    fairness.add(JobFacts(samples=samples))
    return latency, fairness

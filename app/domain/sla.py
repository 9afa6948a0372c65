"""Latency targets (SLA) and the tenant-fairness rule, as the policy file states them.

``[sla.<class>]`` sets targets for a priority class and ``[sla."<type>.<class>"]`` for one
profile (it wins, target by target). A target bounds one quantile of one measure:
``wait_p95_seconds = 2`` says 95 % of attempts of that class are reserved within 2 s of being
queued. ``[fairness]`` says when a tenant counts as starved in a pool.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from app.domain.events import JobType, Priority

TargetSeconds = Annotated[float, Field(gt=0, le=366 * 24 * 3600)]


class Measure(StrEnum):
    """What a latency figure measures."""

    WAIT = "wait"
    """Queued (submitted, retried, rerouted, redriven) to reserved by a node."""
    RUN = "run"
    """Reserved to completed, failed or expired."""
    END_TO_END = "end_to_end"
    """Submitted to completed."""


QUANTILES: dict[str, float] = {"p50": 0.5, "p95": 0.95, "p99": 0.99}


class SlaSection(BaseModel):
    """One ``[sla.*]`` table: ``<measure>_<quantile>_seconds`` targets, each optional."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    wait_p50_seconds: TargetSeconds | None = None
    wait_p95_seconds: TargetSeconds | None = None
    wait_p99_seconds: TargetSeconds | None = None
    run_p50_seconds: TargetSeconds | None = None
    run_p95_seconds: TargetSeconds | None = None
    run_p99_seconds: TargetSeconds | None = None
    end_to_end_p50_seconds: TargetSeconds | None = None
    end_to_end_p95_seconds: TargetSeconds | None = None
    end_to_end_p99_seconds: TargetSeconds | None = None


class FairnessSection(BaseModel):
    """``[fairness]``: a tenant is starved in a pool when its wait p95 exceeds the pool's by
    more than ``starvation_factor`` times, over at least ``min_attempts`` started attempts."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    starvation_factor: Annotated[float, Field(gt=1, le=1000)] = 2.0
    min_attempts: Annotated[int, Field(ge=1, le=1_000_000)] = 5


Targets = tuple[tuple[str, float], ...]
"""One measure's targets, ``(quantile label, seconds)`` in quantile order."""


@dataclass(frozen=True, slots=True)
class SlaTargets:
    """The resolved targets of one (job type, priority class)."""

    by_measure: tuple[tuple[Measure, Targets], ...] = ()

    def of(self, measure: Measure) -> Targets:
        return next((found for m, found in self.by_measure if m is measure), ())


def check_sla_keys(sections: dict[str, SlaSection]) -> dict[str, SlaSection]:
    """Keys must be a priority class or a ``<job_type>.<priority>`` profile."""
    for name in sections:
        job_type, dot, priority = name.rpartition(".")
        known = priority in set(Priority) and (not dot or job_type in set(JobType))
        if not known:
            raise ValueError(f"sla section {name!r} is not '<priority>' or '<job_type>.<priority>'")
    return sections


def resolve_targets(sections: dict[str, SlaSection], job_type: str, priority: str) -> SlaTargets:
    """The targets of a (job type, priority class): the class's, then its profile's on top."""
    merged: dict[str, float] = {}
    for name in (priority, f"{job_type}.{priority}"):
        section = sections.get(name)
        if section is not None:
            merged |= section.model_dump(exclude_none=True)
    by_measure = (
        (
            measure,
            tuple(
                (q, merged[f"{measure}_{q}_seconds"])
                for q in QUANTILES
                if f"{measure}_{q}_seconds" in merged
            ),
        )
        for measure in Measure
    )
    return SlaTargets(tuple((m, found) for m, found in by_measure if found))

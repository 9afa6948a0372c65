"""Retry, lease, TTL, priority and reroute policy: defaults per (job type, priority class).

A policy is parsed from TOML text (the composition root reads the file, not this module). Settings
merge in this order, later winning: ``[defaults]``, ``[job_types.<type>]``,
``[priorities.<class>]``,
``[profiles."<type>.<class>"]``, ``[pools.<pool>]`` (reroute rules), then the job's own overrides
from its ``submitted`` event.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from app.domain.events import JobType, Name, PoolName, Priority
from app.domain.sla import (
    FairnessSection,
    SlaSection,
    SlaTargets,
    check_sla_keys,
    resolve_targets,
)
from app.domain.state import JobSpec

Seconds = Annotated[float, Field(gt=0, le=366 * 24 * 3600)]


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RetrySection(_Strict):
    initial_interval_seconds: Seconds | None = None
    backoff_coefficient: Annotated[float, Field(ge=1, le=100)] | None = None
    max_interval_seconds: Seconds | None = None


class Section(_Strict):
    """One layer of settings; a field left out inherits from the layer below."""

    max_attempts: Annotated[int, Field(ge=1, le=1000)] | None = None
    lease_seconds: Seconds | None = None
    ttl_seconds: Seconds | None = None
    rabbit_priority: Annotated[int, Field(ge=0, le=9)] | None = None
    non_retryable_errors: frozenset[str] | None = None
    fallback_pools: tuple[PoolName, ...] | None = None
    reroute_after_failures: Annotated[int, Field(ge=1, le=1000)] | None = None
    routing: Name | None = None
    """A routing plugin (entry point of group ``jobtrail.routing``) that picks pool and cooldown."""
    retry: RetrySection = RetrySection()


class PolicyFile(_Strict):
    """The TOML document, validated."""

    jitter: Annotated[float, Field(ge=0, le=0.5)] = 0.2
    clock_skew_tolerance_seconds: Seconds = 300
    max_priority: Annotated[int, Field(ge=1, le=9)] = 9
    defaults: Section = Section()
    job_types: dict[JobType, Section] = {}
    priorities: dict[Priority, Section] = {}
    profiles: dict[str, Section] = {}
    pools: dict[str, Section] = {}
    queues: dict[str, Name] = {}
    # Latency targets and the fairness rule (app/domain/sla.py): read by reports, never by decide.
    sla: dict[str, SlaSection] = {}
    fairness: FairnessSection = FairnessSection()

    @field_validator("sla")
    @classmethod
    def _sla_names(cls, value: dict[str, SlaSection]) -> dict[str, SlaSection]:
        return check_sla_keys(value)

    @field_validator("profiles")
    @classmethod
    def _profile_names(cls, value: dict[str, Section]) -> dict[str, Section]:
        for name in value:
            job_type, _, priority = name.partition(".")
            if job_type not in set(JobType) or priority not in set(Priority):
                raise ValueError(f"profile {name!r} is not '<job_type>.<priority>'")
        return value


@dataclass(frozen=True, slots=True)
class RetrySettings:
    initial_interval: timedelta
    backoff_coefficient: float
    maximum_interval: timedelta


@dataclass(frozen=True, slots=True)
class JobPolicy:
    """The fully resolved rules for one job."""

    max_attempts: int
    lease_timeout: timedelta
    ttl: timedelta
    retry: RetrySettings
    rabbit_priority: int
    non_retryable_errors: frozenset[str]
    fallback_pools: tuple[str, ...]
    reroute_after_failures: int | None
    routing: str | None = None


BUILTIN = Section(
    max_attempts=3,
    lease_seconds=300,
    ttl_seconds=4 * 3600,
    rabbit_priority=5,
    non_retryable_errors=frozenset(),
    fallback_pools=(),
    retry=RetrySection(
        initial_interval_seconds=10, backoff_coefficient=2, max_interval_seconds=600
    ),
)


def _merge(base: Section, top: Section) -> Section:
    merged: dict[str, Any] = base.model_dump()
    merged.update({k: v for k, v in top.model_dump(exclude={"retry"}).items() if v is not None})
    retry = base.retry.model_dump()
    retry.update({k: v for k, v in top.retry.model_dump().items() if v is not None})
    merged["retry"] = retry
    return Section.model_validate(merged)


def _seconds(value: float | None) -> timedelta:
    assert value is not None  # BUILTIN fills every field
    return timedelta(seconds=value)


RULES_MEMO_SIZE = 4096
"""Distinct kinds of job whose rules a policy remembers (then it starts afresh)."""


def rules_key(spec: JobSpec) -> tuple[object, ...]:
    """What ``Policy.for_job`` reads of a spec: everything but model, tenant, queue, payload."""
    return (
        spec.job_type,
        spec.priority,
        spec.pool,
        spec.max_attempts,
        spec.ttl_seconds,
        spec.lease_seconds,
        spec.retry,
        spec.fallback_pools,
        spec.reroute_after_failures,
    )


@dataclass(frozen=True)
class Policy:
    """The policy file resolved against the built-in defaults."""

    document: PolicyFile
    # A memo of resolved rules: ``for_job`` is pure, and replays call it for every event.
    _rules: dict[tuple[object, ...], JobPolicy] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )

    @classmethod
    def from_toml(cls, text: str) -> Policy:
        """Parse and validate TOML text; raises ``ValueError`` with the reason."""
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"policy is not valid TOML: {exc}") from exc
        try:
            return cls(PolicyFile.model_validate(raw))
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(part) for part in first["loc"]) or "policy"
            more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
            raise ValueError(f"invalid policy: {where}: {first['msg']}{more}") from exc

    @classmethod
    def default(cls) -> Policy:
        return cls(PolicyFile())

    @property
    def jitter(self) -> float:
        return self.document.jitter

    @property
    def clock_skew_tolerance(self) -> timedelta:
        """How far ahead of Jobtrail's clock an ``occurred_at`` may be before it is flagged.

        Only ahead: an event recorded late (a backlog, an outage) is lag, never an anomaly.
        """
        return timedelta(seconds=self.document.clock_skew_tolerance_seconds)

    def section_for(self, job_type: JobType, priority: Priority, pool: str) -> Section:
        doc, layer = self.document, _merge(BUILTIN, self.document.defaults)
        for extra in (
            doc.job_types.get(job_type),
            doc.priorities.get(priority),
            doc.profiles.get(f"{job_type}.{priority}"),
            doc.pools.get(pool),
        ):
            if extra is not None:
                layer = _merge(layer, extra)
        return layer

    def for_job(self, spec: JobSpec) -> JobPolicy:
        """The rules for a job: policy layers, then the job's own overrides (memoized)."""
        key = rules_key(spec)
        rules = self._rules.get(key)
        if rules is None:
            if len(self._rules) >= RULES_MEMO_SIZE:
                self._rules.clear()
            rules = self._rules[key] = self._resolve(spec)
        return rules

    def _resolve(self, spec: JobSpec) -> JobPolicy:
        layer = self.section_for(spec.job_type, spec.priority, spec.pool)
        own = Section(
            max_attempts=spec.max_attempts,
            lease_seconds=spec.lease_seconds,
            ttl_seconds=spec.ttl_seconds,
            fallback_pools=spec.fallback_pools or None,
            reroute_after_failures=spec.reroute_after_failures,
            retry=RetrySection.model_validate(spec.retry.model_dump())
            if spec.retry
            else RetrySection(),
        )
        layer = _merge(layer, own)
        assert layer.max_attempts is not None and layer.rabbit_priority is not None
        return JobPolicy(
            max_attempts=layer.max_attempts,
            lease_timeout=_seconds(layer.lease_seconds),
            ttl=_seconds(layer.ttl_seconds),
            retry=RetrySettings(
                initial_interval=_seconds(layer.retry.initial_interval_seconds),
                backoff_coefficient=layer.retry.backoff_coefficient or 1.0,
                maximum_interval=_seconds(layer.retry.max_interval_seconds),
            ),
            rabbit_priority=min(layer.rabbit_priority, self.document.max_priority),
            non_retryable_errors=layer.non_retryable_errors or frozenset(),
            fallback_pools=layer.fallback_pools or (),
            reroute_after_failures=layer.reroute_after_failures,
            routing=layer.routing,
        )

    def sla_targets(self, job_type: str, priority: str) -> SlaTargets:
        """The latency targets of a (job type, priority class); empty when the file sets none."""
        return resolve_targets(self.document.sla, job_type, priority)

    def routing_plugins(self) -> frozenset[str]:
        """Every routing plugin the policy names, in any section."""
        doc = self.document
        sections = [
            doc.defaults,
            *doc.job_types.values(),
            *doc.priorities.values(),
            *doc.profiles.values(),
            *doc.pools.values(),
        ]
        return frozenset(s.routing for s in sections if s.routing is not None)

    def queue_for(self, pool: str, job_type: JobType) -> str:
        """A pool's work queue for a job type: the policy's ``[queues]`` or the default name."""
        return self.document.queues.get(f"{pool}.{job_type}", f"jobtrail.work.{pool}.{job_type}")

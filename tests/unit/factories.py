"""Event builders, recorded histories and Hypothesis strategies shared by the unit tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import strategies as st

from app.domain.chain import GENESIS_HASH, RecordedEvent, StoredEvent, link_hash
from app.domain.events import (
    Cancelled,
    Completed,
    DeadLettered,
    DeadLetterReason,
    Expired,
    ExpiryReason,
    Failed,
    Heartbeat,
    JobEvent,
    JobType,
    Priority,
    Redriven,
    Rerouted,
    Reserved,
    Retried,
    RetryOverride,
    Routed,
    RoutingRecord,
    Submitted,
    canonical_json,
)
from app.domain.machine import fold
from app.domain.policy import Policy
from app.domain.state import JobState

T0 = datetime(2024, 1, 1, 12, 0, tzinfo=UTC)
JOB = "job-1"
NODE = "node-a"
OTHER_NODE = "node-b"

TEST_POLICY_TOML = """
jitter = 0.2
clock_skew_tolerance_seconds = 300

[defaults]
max_attempts = 4
lease_seconds = 60
ttl_seconds = 3600
non_retryable_errors = ["invalid_input"]

[defaults.retry]
initial_interval_seconds = 5
backoff_coefficient = 2.0
max_interval_seconds = 40

[pools.gpu-a]
fallback_pools = ["gpu-b", "shared"]
reroute_after_failures = 2

[queues]
"gpu-b.sync" = "inference.gpu-b.sync"
"""
"""A small policy with short intervals and a reroute rule on pool ``gpu-a``."""


def small_policy() -> Policy:
    return Policy.from_toml(TEST_POLICY_TOML)


def new_id() -> uuid.UUID:
    return uuid.uuid4()


def _envelope(
    job_id: str, at: datetime, attempt: int, source: str, extra: dict[str, Any]
) -> dict[str, Any]:
    envelope: dict[str, Any] = {
        "event_id": new_id(),
        "job_id": job_id,
        "occurred_at": at,
        "attempt": attempt,
        "source": source,
    }
    envelope.update(extra)
    return envelope


def submitted(job_id: str = JOB, *, at: datetime = T0, attempt: int = 1, **extra: Any) -> Submitted:
    fields: dict[str, Any] = {
        "job_type": JobType.SYNC,
        "model": "llama-3-8b",
        "priority": Priority.URGENT,
        "tenant": "acme",
        "pool": "shared",
        "queue": "jobtrail.work.shared.sync",
    }
    fields.update(extra)
    return Submitted(**_envelope(job_id, at, attempt, "cloud", fields))


def reserved(
    job_id: str = JOB, *, at: datetime = T0, attempt: int = 1, node_id: str = NODE, **extra: Any
) -> Reserved:
    return Reserved(**_envelope(job_id, at, attempt, node_id, {"node_id": node_id, **extra}))


def heartbeat(
    job_id: str = JOB, *, at: datetime = T0, attempt: int = 1, node_id: str = NODE
) -> Heartbeat:
    return Heartbeat(**_envelope(job_id, at, attempt, node_id, {"node_id": node_id}))


def completed(
    job_id: str = JOB, *, at: datetime = T0, attempt: int = 1, node_id: str = NODE, **extra: Any
) -> Completed:
    return Completed(**_envelope(job_id, at, attempt, node_id, {"node_id": node_id, **extra}))


def failed(
    job_id: str = JOB,
    *,
    at: datetime = T0,
    attempt: int = 1,
    node_id: str = NODE,
    error_code: str = "oom",
    retryable: bool = True,
    **extra: Any,
) -> Failed:
    fields = {"node_id": node_id, "error_code": error_code, "retryable": retryable, **extra}
    return Failed(**_envelope(job_id, at, attempt, node_id, fields))


def expired(
    job_id: str = JOB,
    *,
    at: datetime = T0,
    attempt: int = 1,
    reason: ExpiryReason = ExpiryReason.LEASE,
    source: str = "broker",
    **extra: Any,
) -> Expired:
    return Expired(**_envelope(job_id, at, attempt, source, {"reason": reason, **extra}))


def routed(job_id: str = JOB, *, at: datetime = T0, attempt: int = 1, **record: Any) -> Routed:
    """A routing plugin's answer for attempt ``attempt``'s cooldown (``record``: its fields)."""
    routing = RoutingRecord(**{"plugin": "least-failing", "version": "0.1.0", **record})
    return Routed(**_envelope(job_id, at, attempt, "jobtrail", {"routing": routing}))


def retried(
    job_id: str = JOB,
    *,
    at: datetime = T0,
    attempt: int = 2,
    pool: str = "shared",
    queue: str = "q",
) -> Retried:
    return Retried(**_envelope(job_id, at, attempt, "jobtrail", {"pool": pool, "queue": queue}))


def rerouted(
    job_id: str = JOB,
    *,
    at: datetime = T0,
    attempt: int = 2,
    from_pool: str = "shared",
    pool: str = "gpu-b",
    queue: str = "q",
) -> Rerouted:
    fields = {"from_pool": from_pool, "pool": pool, "queue": queue}
    return Rerouted(**_envelope(job_id, at, attempt, "jobtrail", fields))


def dead_lettered(
    job_id: str = JOB,
    *,
    at: datetime = T0,
    attempt: int = 1,
    reason: DeadLetterReason = DeadLetterReason.BROKER,
    source: str = "broker",
) -> DeadLettered:
    return DeadLettered(**_envelope(job_id, at, attempt, source, {"reason": reason}))


def cancelled(
    job_id: str = JOB, *, at: datetime = T0, attempt: int = 1, actor: str = "ops@acme", **extra: Any
) -> Cancelled:
    return Cancelled(**_envelope(job_id, at, attempt, "cloud", {"actor": actor, **extra}))


def redriven(
    job_id: str = JOB,
    *,
    at: datetime = T0,
    attempt: int = 2,
    pool: str = "shared",
    queue: str = "q",
    actor: str = "ops@acme",
) -> Redriven:
    fields = {"actor": actor, "pool": pool, "queue": queue}
    return Redriven(**_envelope(job_id, at, attempt, "operator", fields))


def with_new_id(event: JobEvent) -> JobEvent:
    """The same report sent again: equal content, a fresh event id."""
    return event.model_copy(update={"event_id": new_id()})


def recorded(event: JobEvent, seq: int, recorded_at: datetime | None = None) -> RecordedEvent:
    """A log entry for ``event``; recorded when it occurred unless told otherwise."""
    return RecordedEvent(
        seq=seq,
        recorded_at=event.occurred_at if recorded_at is None else recorded_at,
        prev_hash=GENESIS_HASH,
        hash=GENESIS_HASH,
        event=event,
    )


def record_all(events: Iterable[JobEvent]) -> list[RecordedEvent]:
    """Number events 1, 2, 3 … each recorded at its own ``occurred_at``."""
    return [recorded(event, seq) for seq, event in enumerate(events, start=1)]


def fold_events(*events: JobEvent) -> JobState:
    return fold(record_all(events))


def stored_chain(
    events: Sequence[JobEvent], recorded_ats: Sequence[datetime] | None = None
) -> list[StoredEvent]:
    """A correctly linked chain of log entries for one job's events."""
    entries: list[StoredEvent] = []
    prev = GENESIS_HASH
    for seq, event in enumerate(events, start=1):
        at = event.occurred_at if recorded_ats is None else recorded_ats[seq - 1]
        data = canonical_json(event)
        digest = link_hash(event.job_id, seq, at, prev, data)
        occurred_at = event.occurred_at.astimezone(UTC)
        entries.append(
            StoredEvent(
                event.job_id,
                seq,
                str(event.event_id),
                at,
                prev,
                digest,
                data,
                event.type,
                event.attempt,
                occurred_at,
            )
        )
        prev = digest
    return entries


@dataclass
class History:
    """A growing log of one job: append events at given instants, read the fold."""

    job_id: str = JOB
    entries: list[RecordedEvent] = field(default_factory=list)

    def add(self, event: JobEvent, recorded_at: datetime | None = None) -> JobState:
        self.entries.append(recorded(event, len(self.entries) + 1, recorded_at))
        return self.state

    def extend(self, events: Iterable[JobEvent], recorded_at: datetime | None = None) -> JobState:
        for event in events:
            self.add(event, recorded_at)
        return self.state

    @property
    def state(self) -> JobState:
        return fold(self.entries) if self.entries else JobState(job_id=self.job_id)


# --- Hypothesis strategies -------------------------------------------------------------------

job_ids = st.from_regex(r"\A[A-Za-z0-9._:-]{1,40}\Z", fullmatch=True)
names = st.sampled_from(["shared", "gpu-a", "gpu-b", "sla-1"])
nodes = st.sampled_from([NODE, OTHER_NODE, "node-c"])
error_codes = st.sampled_from(["oom", "timeout", "invalid_input", "cuda_error"])
attempts = st.integers(min_value=1, max_value=6)
offsets = st.integers(min_value=-3600, max_value=3 * 3600).map(lambda s: timedelta(seconds=s))
timezones = st.sampled_from(
    [UTC, timezone(timedelta(hours=3)), timezone(-timedelta(hours=5, minutes=30))]
)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_payloads = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
positive_seconds = st.floats(min_value=0.5, max_value=7200, allow_nan=False, allow_infinity=False)
retry_overrides = st.builds(
    RetryOverride,
    initial_interval_seconds=st.none() | positive_seconds,
    backoff_coefficient=st.none() | st.floats(min_value=1, max_value=5),
    max_interval_seconds=st.none() | positive_seconds,
)


def _at(base: datetime = T0) -> st.SearchStrategy[datetime]:
    return st.tuples(offsets, timezones).map(lambda pair: (base + pair[0]).astimezone(pair[1]))


@st.composite
def submitted_events(draw: st.DrawFn, job_id: str = JOB, at: datetime | None = None) -> Submitted:
    """A submission with any mix of per-job overrides."""
    return submitted(
        job_id,
        at=draw(_at()) if at is None else at,
        attempt=draw(st.integers(min_value=1, max_value=3)),
        job_type=draw(st.sampled_from(JobType)),
        priority=draw(st.sampled_from(Priority)),
        pool=draw(names),
        payload=draw(json_payloads),
        max_attempts=draw(st.none() | st.integers(min_value=1, max_value=5)),
        ttl_seconds=draw(st.none() | st.floats(min_value=60, max_value=4 * 3600)),
        lease_seconds=draw(st.none() | st.floats(min_value=5, max_value=600)),
        retry=draw(st.none() | retry_overrides),
        fallback_pools=tuple(draw(st.lists(names, max_size=3))),
        reroute_after_failures=draw(st.none() | st.integers(min_value=1, max_value=3)),
    )


@st.composite
def lifecycle_submissions(draw: st.DrawFn, job_id: str = JOB, at: datetime = T0) -> Submitted:
    """A submission with realistic overrides: short cooldowns, TTLs long enough to retry in."""
    short = st.floats(min_value=0.5, max_value=30)
    return submitted(
        job_id,
        at=at,
        attempt=draw(st.sampled_from([1, 1, 1, 2, 5])),
        job_type=draw(st.sampled_from(JobType)),
        priority=draw(st.sampled_from(Priority)),
        pool=draw(st.sampled_from(["gpu-a", "gpu-a", "shared", "sla-1"])),
        payload=draw(st.none() | json_payloads),
        max_attempts=draw(st.sampled_from([None, 1, 2, 2, 3, 5])),
        ttl_seconds=draw(
            st.none()
            | st.floats(min_value=1800, max_value=4 * 3600)
            | st.floats(min_value=20, max_value=300)
        ),
        lease_seconds=draw(st.none() | st.floats(min_value=5, max_value=600)),
        retry=draw(
            st.none()
            | st.builds(
                RetryOverride,
                initial_interval_seconds=st.none() | short,
                backoff_coefficient=st.none() | st.floats(1, 3),
                max_interval_seconds=st.none() | short.map(lambda x: x * 4),
            )
        ),
        fallback_pools=tuple(draw(st.lists(names, max_size=3))),
        reroute_after_failures=draw(st.sampled_from([None, 1, 1, 2, 3])),
    )


@st.composite
def any_events(draw: st.DrawFn, job_id: str = JOB) -> JobEvent:
    """Any valid event of any type for ``job_id``: plausible or not in whatever state it meets."""
    at = draw(_at())
    attempt = draw(attempts)
    kind = draw(
        st.sampled_from(
            [
                "submitted",
                "reserved",
                "heartbeat",
                "completed",
                "failed",
                "expired",
                "retried",
                "rerouted",
                "dead_lettered",
                "cancelled",
                "redriven",
            ]
        )
    )
    builders: dict[str, Any] = {
        "submitted": lambda: draw(submitted_events(job_id, at)),
        "reserved": lambda: reserved(
            job_id,
            at=at,
            attempt=attempt,
            node_id=draw(nodes),
            lease_seconds=draw(st.none() | positive_seconds),
        ),
        "heartbeat": lambda: heartbeat(job_id, at=at, attempt=attempt, node_id=draw(nodes)),
        "completed": lambda: completed(job_id, at=at, attempt=attempt, node_id=draw(nodes)),
        "failed": lambda: failed(
            job_id,
            at=at,
            attempt=attempt,
            node_id=draw(nodes),
            error_code=draw(error_codes),
            retryable=draw(st.booleans()),
        ),
        "expired": lambda: expired(
            job_id, at=at, attempt=attempt, reason=draw(st.sampled_from(ExpiryReason))
        ),
        "retried": lambda: retried(job_id, at=at, attempt=attempt, pool=draw(names)),
        "rerouted": lambda: rerouted(job_id, at=at, attempt=attempt, pool=draw(names)),
        "dead_lettered": lambda: dead_lettered(
            job_id, at=at, attempt=attempt, reason=draw(st.sampled_from(DeadLetterReason))
        ),
        "cancelled": lambda: cancelled(job_id, at=at, attempt=attempt),
        "redriven": lambda: redriven(job_id, at=at, attempt=attempt, pool=draw(names)),
    }
    event: JobEvent = builders[kind]()
    return event


@st.composite
def recorded_histories(
    draw: st.DrawFn, job_id: str = JOB, min_size: int = 0, max_size: int = 25
) -> list[RecordedEvent]:
    """Any sequence of valid events, numbered, each recorded near (or far from) when it occurred.

    As in a real log, ``recorded_at`` never goes back; ``occurred_at`` may do anything.
    """
    events = draw(st.lists(any_events(job_id), min_size=min_size, max_size=max_size))
    skews = st.sampled_from([0, 0, 0, 1, -1, 600, -600]).map(lambda s: timedelta(seconds=s))
    entries: list[RecordedEvent] = []
    clock = T0 - timedelta(days=1)
    for seq, event in enumerate(events, start=1):
        clock = max(clock, event.occurred_at + draw(skews))
        entries.append(recorded(event, seq, clock))
    return entries

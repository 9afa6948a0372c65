"""Lifecycle events: one frozen pydantic model per type, a discriminated union on ``type``.

The same schema is used on the wire, in the log and in the API. Stored type names are stable
strings (``"failed"``) with a ``version``; a change of meaning adds a version and an upcaster.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    SerializerFunctionWrapHandler,
    StringConstraints,
    TypeAdapter,
    field_validator,
    model_serializer,
    model_validator,
)

JOB_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,200}$"
MAX_PAYLOAD_BYTES = 64 * 1024

JobId = Annotated[str, StringConstraints(pattern=JOB_ID_PATTERN, min_length=1, max_length=200)]
NO_NUL = r"^[^\x00]*$"
"""Text never holds NUL: PostgreSQL cannot store it, and no name or message needs it."""
Name = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=NO_NUL)]
PoolName = Annotated[str, StringConstraints(min_length=1, max_length=160, pattern=NO_NUL)]
"""A pool: short enough for its default work queue ``jobtrail.work.<pool>.<job_type>``."""
Text = Annotated[str, StringConstraints(max_length=4000, pattern=NO_NUL)]
PositiveSeconds = Annotated[float, Field(gt=0, le=366 * 24 * 3600)]


def _queue_name(value: str) -> str:
    """RabbitMQ refuses names over 255 bytes and the reserved ``amq.`` prefix."""
    if value.startswith("amq."):
        raise ValueError("queue names starting with 'amq.' are reserved by RabbitMQ")
    if len(value.encode()) > 255:
        raise ValueError("a queue name is at most 255 bytes of UTF-8")
    return value


def _utc_representable(value: datetime) -> datetime:
    """An instant that has a UTC form (``0001-01-01T00:00+14:00`` has none)."""
    if 1 < value.year < 9999:  # offsets are under a day: only the first and last years overflow
        return value
    try:
        value.astimezone(UTC)
    except OverflowError:
        raise ValueError("instant is out of range once converted to UTC") from None
    return value


QueueName = Annotated[Name, AfterValidator(_queue_name)]
"""A work queue RabbitMQ accepts."""


class JobType(StrEnum):
    SYNC = "sync"
    POLLING = "polling"
    BATCH = "batch"
    STREAM = "stream"


class Priority(StrEnum):
    URGENT = "urgent"
    BULK = "bulk"
    TEST = "test"


class ExpiryReason(StrEnum):
    LEASE = "lease"
    TTL = "ttl"


class DeadLetterReason(StrEnum):
    RETRIES_EXHAUSTED = "retries_exhausted"
    NON_RETRYABLE = "non_retryable"
    TTL = "ttl"
    POISON = "poison"
    BROKER = "broker"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class RetryOverride(_Frozen):
    """Per-job retry settings; any field left out falls back to the policy."""

    initial_interval_seconds: PositiveSeconds | None = None
    backoff_coefficient: Annotated[float, Field(ge=1, le=100)] | None = None
    max_interval_seconds: PositiveSeconds | None = None


class EventBase(_Frozen):
    """The envelope every lifecycle event shares."""

    version: Literal[1] = 1
    event_id: UUID
    job_id: JobId
    occurred_at: Annotated[AwareDatetime, AfterValidator(_utc_representable)]
    attempt: Annotated[int, Field(ge=1, le=1_000_000)]
    source: Name
    actor: Name | None = None


class Submitted(EventBase):
    type: Literal["submitted"] = "submitted"
    job_type: JobType
    model: Name
    priority: Priority
    tenant: Name
    pool: PoolName
    queue: QueueName
    payload: JsonValue = None
    max_attempts: Annotated[int, Field(ge=1, le=1000)] | None = None
    ttl_seconds: PositiveSeconds | None = None
    lease_seconds: PositiveSeconds | None = None
    retry: RetryOverride | None = None
    fallback_pools: tuple[PoolName, ...] = Field(default=(), max_length=32)
    reroute_after_failures: Annotated[int, Field(ge=1, le=1000)] | None = None

    @field_validator("payload")
    @classmethod
    def _payload_fits(cls, value: JsonValue) -> JsonValue:
        size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
        if size > MAX_PAYLOAD_BYTES:
            raise ValueError(f"payload is {size} bytes; at most {MAX_PAYLOAD_BYTES} are allowed")
        return value


class Reserved(EventBase):
    type: Literal["reserved"] = "reserved"
    node_id: Name
    lease_seconds: PositiveSeconds | None = None


class Heartbeat(EventBase):
    type: Literal["heartbeat"] = "heartbeat"
    node_id: Name


class Completed(EventBase):
    type: Literal["completed"] = "completed"
    node_id: Name
    duration_ms: Annotated[int, Field(ge=0)] | None = None


class Failed(EventBase):
    type: Literal["failed"] = "failed"
    node_id: Name
    error_code: Name
    error_message: Text = ""
    retryable: bool


class Expired(EventBase):
    type: Literal["expired"] = "expired"
    reason: ExpiryReason
    detail: Text = ""


class PoolFigures(_Frozen):
    """One pool in a fleet snapshot: its recent attempts' failure rate and wait for a node."""

    pool: PoolName
    outcomes: Annotated[int, Field(ge=0)]
    """How many recent attempts ended (completed, failed, lease ran out) on the pool."""
    failure_rate: Annotated[float, Field(ge=0, le=1)]
    wait_seconds: Annotated[float, Field(ge=0)] | None = None
    """The mean recent wait from being queued to being reserved; None if none was seen."""


class RoutingRecord(_Frozen):
    """A routing plugin's decision as recorded: who answered, what it saw, what it said.

    Replay, rebuild and verify decide from this record and never call the plugin again. When
    the plugin failed or answered nonsense, ``fallback`` says why and ``pool`` and
    ``cooldown_seconds`` are the policy's own rule, which decided instead.
    """

    plugin: Name
    version: Name
    fleet: tuple[PoolFigures, ...] = Field(default=(), max_length=256)
    pool: PoolName | None = None
    """The pool to republish to; None stays on the job's pool."""
    cooldown_seconds: Annotated[float, Field(ge=0, le=366 * 24 * 3600)]
    fallback: Text | None = None


class _Republished(EventBase):
    """A republish Jobtrail decided; ``routing`` is there only when a plugin was asked."""

    routing: RoutingRecord | None = None

    @model_serializer(mode="wrap")
    def _without_absent_routing(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Events recorded before routing plugins existed must keep their canonical JSON (and
        # so their hashes): an absent record is left out rather than written as null.
        data: dict[str, Any] = handler(self)
        if data.get("routing") is None:
            data.pop("routing", None)
        return data


class Retried(_Republished):
    """Jobtrail republished the job, after its cooldown, for attempt ``attempt``."""

    type: Literal["retried"] = "retried"
    pool: PoolName
    queue: QueueName


class Rerouted(_Republished):
    """Jobtrail republished the job for attempt ``attempt`` to another pool."""

    type: Literal["rerouted"] = "rerouted"
    from_pool: PoolName
    pool: PoolName
    queue: QueueName


class Routed(EventBase):
    """Jobtrail asked the job's routing plugin, as attempt ``attempt`` began cooling down.

    Recorded before the republish it decides, so a restarted tracker, another one taking over,
    replay and rebuild all read the answer from the log and never ask the plugin again.
    """

    type: Literal["routed"] = "routed"
    routing: RoutingRecord


class DeadLettered(EventBase):
    type: Literal["dead_lettered"] = "dead_lettered"
    reason: DeadLetterReason
    detail: Text = ""


class Cancelled(EventBase):
    type: Literal["cancelled"] = "cancelled"
    reason: Text = ""

    @model_validator(mode="after")
    def _needs_actor(self) -> Cancelled:
        if self.actor is None:
            raise ValueError("a cancelled event names its actor")
        return self


class Redriven(EventBase):
    """An operator sent a dead-lettered job back to its queue as attempt ``attempt``."""

    type: Literal["redriven"] = "redriven"
    pool: PoolName
    queue: QueueName
    reason: Text = ""

    @model_validator(mode="after")
    def _needs_actor(self) -> Redriven:
        if self.actor is None:
            raise ValueError("a redriven event names its actor")
        return self


JobEvent = Annotated[
    Submitted
    | Reserved
    | Heartbeat
    | Completed
    | Failed
    | Expired
    | Routed
    | Retried
    | Rerouted
    | DeadLettered
    | Cancelled
    | Redriven,
    Field(discriminator="type"),
]

EVENT_TYPES: tuple[str, ...] = (
    "submitted",
    "reserved",
    "heartbeat",
    "completed",
    "failed",
    "expired",
    "routed",
    "retried",
    "rerouted",
    "dead_lettered",
    "cancelled",
    "redriven",
)
"""Every stable type name, in lifecycle order."""

DERIVED_TYPES: frozenset[str] = frozenset(
    {"expired", "routed", "retried", "rerouted", "dead_lettered"}
)
"""Types Jobtrail itself may decide (brokers may also report expired and dead_lettered)."""

EVENT_ADAPTER: TypeAdapter[JobEvent] = TypeAdapter(JobEvent)


def parse_event(data: str | bytes) -> JobEvent:
    """Validate one event from its JSON text; raises ``pydantic.ValidationError``."""
    return EVENT_ADAPTER.validate_json(data)


def event_from_dict(data: dict[str, Any]) -> JobEvent:
    """Validate one event from already-decoded JSON."""
    return EVENT_ADAPTER.validate_python(data)


def canonical_json(event: JobEvent) -> str:
    """The one encoding that hashes and stores an event: sorted keys, no spaces, UTF-8 text."""
    return json.dumps(
        event.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )


def as_utc(moment: datetime) -> str:
    """ISO-8601 text of an aware instant in UTC with microseconds, used in hashes and storage."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")

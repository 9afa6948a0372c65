"""Schemas and messages of the AsyncAPI document (app/entrypoints/asyncapi_doc.py).

Payload schemas are pydantic's JSON Schemas of the event models ``parse_event`` validates with
(and of the job messages Jobtrail publishes), corrected where pydantic's schema is looser than the
parse: ``type`` is the discriminator, so it is required although it has a default, and
``cancelled`` / ``redriven`` need an ``actor`` (a model validator; tests/e2e/test_asyncapi.py
checks every required field against ``parse_event``). Headers are those the code sets
(app/client.py, app/services/projection.py, app/adapters/rabbit.py).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue
from pydantic.json_schema import models_json_schema

from app.domain.events import (
    JOB_ID_PATTERN,
    Cancelled,
    Completed,
    DeadLettered,
    DeadLetterReason,
    EventBase,
    Expired,
    Failed,
    Heartbeat,
    JobId,
    Redriven,
    Rerouted,
    Reserved,
    Retried,
    Routed,
    Submitted,
    Text,
)
from app.ports import topology

EVENT_MODELS: tuple[type[EventBase], ...] = (
    Submitted, Reserved, Heartbeat, Completed, Failed, Expired,
    Routed, Retried, Rerouted, DeadLettered, Cancelled, Redriven,
)  # fmt: skip
NEEDS_ACTOR = frozenset({"cancelled", "redriven"})
"""Types whose model validator refuses an event without ``actor``."""
_EMITTERS = {
    "submitted": "the Cloud: a job entered the queue (published before the job message)",
    "reserved": "a node: it took the job; starts the attempt's lease",
    "heartbeat": "a node: extends the lease of a long attempt",
    "completed": "a node: the attempt succeeded",
    "failed": "a node: the attempt failed (error code, message, retryable or not)",
    "expired": "Jobtrail or the broker: a lease or the job's TTL ran out",
    "routed": "Jobtrail: a routing plugin's answer for a cooldown, recorded before the republish",
    "retried": "Jobtrail: republished for attempt n+1 after its cooldown",
    "rerouted": "Jobtrail: republished to a fallback pool",
    "dead_lettered": "Jobtrail or the broker: the job was given up",
    "cancelled": "an operator or the Cloud: the job is never republished",
    "redriven": "an operator: a dead-lettered job sent back to its queue as a new attempt",
}
ROUTING_KEY_RULE = (
    "The body's `type` decides what an event is; the routing key only routes it. An event whose "
    "routing key is not `job.<its type>` is recorded as its body says, logged as a warning and "
    "counted in `jobtrail_misrouted_events_total` (see docs/protocol.md)."
)


class JobMessage(BaseModel):
    """A job on a work queue, as the Cloud and Jobtrail publish it."""

    model_config = ConfigDict(extra="forbid", title="JobMessage")
    job_id: JobId
    attempt: Annotated[int, Field(ge=1, le=1_000_000)]
    payload: JsonValue = Field(description="the submitted event's payload (may be null)")


class DeadJobMessage(JobMessage):
    """A dead-lettered job parked on ``jobtrail.dead``, with its reason."""

    model_config = ConfigDict(extra="forbid", title="DeadJobMessage")
    reason: DeadLetterReason
    detail: Text


def _string(description: str, **schema: Any) -> dict[str, Any]:
    return {"type": "string", "description": description, **schema}


_JOB_ID = _string("the job id (the body's job_id)", pattern=JOB_ID_PATTERN, maxLength=200)
_ATTEMPT = {"type": "integer", "minimum": 1, "maximum": 1_000_000, "description": "the attempt"}
_EVENT_ID = _string("id of the event that published this message (= message_id)", format="uuid")
_X_DEATH = {"type": "array", "items": {"type": "object"}, "description": "RabbitMQ's x-death"}
HEADERS: dict[str, dict[str, Any]] = {
    "EventHeaders": {
        "type": "object",
        "properties": {topology.JOB_ID_HEADER: _JOB_ID},
        "description": "Set it: the partition is chosen by it. An event without it is re-published "
        "once by the tracker with it (same body, same routing key job.<type>).",
    },
    "CloudJobHeaders": {
        "type": "object",
        "required": ["x-jobtrail-attempt", topology.JOB_ID_HEADER],
        "properties": {"x-jobtrail-attempt": _ATTEMPT, topology.JOB_ID_HEADER: _JOB_ID},
    },
    "RepublishedJobHeaders": {
        "type": "object",
        "required": ["x-jobtrail-attempt", topology.JOB_ID_HEADER, "x-jobtrail-event-id"],
        "properties": {
            "x-jobtrail-attempt": _ATTEMPT,
            topology.JOB_ID_HEADER: _JOB_ID,
            "x-jobtrail-event-id": _EVENT_ID,
        },
    },
    "DeadJobHeaders": {
        "type": "object",
        "required": [
            "x-jobtrail-attempt",
            topology.JOB_ID_HEADER,
            "x-jobtrail-event-id",
            topology.REASON_HEADER,
        ],
        "properties": {
            "x-jobtrail-attempt": _ATTEMPT,
            topology.JOB_ID_HEADER: _JOB_ID,
            "x-jobtrail-event-id": _EVENT_ID,
            topology.REASON_HEADER: {"enum": [r.value for r in DeadLetterReason]},
        },
    },
    "QuarantineHeaders": {
        "type": "object",
        "required": [topology.REASON_HEADER],
        "properties": {
            topology.REASON_HEADER: _string(
                "why: `<kind>: <detail>`, e.g. `invalid_json: ...`", minLength=1, maxLength=1000
            )
        },
    },
    "BrokerDeadHeaders": {
        "type": "object",
        "required": ["x-death"],
        "properties": {"x-death": _X_DEATH, "x-delivery-count": {"type": "integer"}},
        "description": "The message's own headers, plus those RabbitMQ adds when it "
        "dead-letters it (x-death, x-first-death-*, x-delivery-count).",
    },
    "QuarantinedBody": {"description": "the body as it came, unchanged: any bytes"},
}


def schemas() -> dict[str, Any]:
    models: list[type[BaseModel]] = [*EVENT_MODELS, JobMessage, DeadJobMessage]
    _, top = models_json_schema(
        [(model, "validation") for model in models], ref_template="#/components/schemas/{model}"
    )
    schemas: dict[str, Any] = top["$defs"]
    for model in EVENT_MODELS:
        event_type = str(model.model_fields["type"].default)
        schema = schemas[model.__name__]
        schema["required"] = ["type", *schema["required"]]  # the discriminator
        if event_type in NEEDS_ACTOR:
            actor = schema["properties"]["actor"]
            (text,) = (s for s in actor.pop("anyOf") if s.get("type") == "string")
            actor.pop("default")
            actor.update(text)
            schema["required"].append("actor")
    return schemas | HEADERS


def _message(name: str, title: str, summary: str, payload: str, headers: str) -> dict[str, Any]:
    return {
        "name": name,
        "title": title,
        "summary": summary,
        "contentType": "application/json",
        "payload": {"$ref": f"#/components/schemas/{payload}"},
        "headers": {"$ref": f"#/components/schemas/{headers}"},
    }


def messages() -> dict[str, Any]:
    messages = {
        f"event.{model.model_fields['type'].default}": _message(
            str(model.model_fields["type"].default),
            model.__name__,
            f"`{model.model_fields['type'].default}`, published by "
            f"{_EMITTERS[str(model.model_fields['type'].default)]}.",
            model.__name__,
            "EventHeaders",
        )
        for model in EVENT_MODELS
    }
    messages |= {
        "cloudJob": _message(
            "cloudJob", "Job message (attempt 1)", "The Cloud's job message, after `submitted`.",
            "JobMessage", "CloudJobHeaders",
        ),
        "republishedJob": _message(
            "republishedJob", "Republished job message",
            "Jobtrail's job message for a retried, rerouted or redriven attempt; AMQP "
            "message_id = x-jobtrail-event-id (drop a repeat).",
            "JobMessage", "RepublishedJobHeaders",
        ),
        "deadJob": _message(
            "deadJob", "Dead-lettered job", "A job Jobtrail gave up, with its reason; AMQP "
            "message_id = x-jobtrail-event-id.", "DeadJobMessage", "DeadJobHeaders",
        ),
        "quarantined": _message(
            "quarantined", "Quarantined input",
            "An input the tracker cannot accept, byte for byte as it came (it may not be JSON).",
            "QuarantinedBody", "QuarantineHeaders",
        ),
        "poisonEvent": _message(
            "poisonEvent", "Poison event",
            "An event delivered x-delivery-limit times without being acknowledged, dead-lettered "
            "by RabbitMQ from its partition queue, with its own headers.",
            "QuarantinedBody", "BrokerDeadHeaders",
        ),
        "brokerDeadJob": _message(
            "brokerDeadJob", "Job message dead-lettered by RabbitMQ",
            "A job message RabbitMQ dead-lettered from its work queue (TTL, rejected, overflow, "
            "delivery limit); recorded as `dead_lettered` from source `broker`.",
            "JobMessage", "BrokerDeadHeaders",
        ),
    }  # fmt: skip
    return messages

"""The event contract as an AsyncAPI 3.0 document, generated from the FastStream app.

The tracker's subscribers take raw bytes (validation is the ingestion service's job, so bad input
can be quarantined), which leaves their payloads undescribed. The document therefore also lists,
as publish operations on the same broker, what producers send to ``jobtrail.events`` (one
message per event type, with the pydantic schema the tracker validates against) and what
Jobtrail itself publishes to work queues and to ``jobtrail.dead``. ``jobtrail asyncapi`` prints
or writes it; the API serves it at ``GET /asyncapi.json``; ``docs/asyncapi.json`` is a copy.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import BaseModel, Field, JsonValue

from app.adapters.rabbit import DEAD_QUEUE, EVENTS_EXCHANGE
from app.bootstrap import build_tracking
from app.domain.events import (
    Cancelled,
    Completed,
    DeadLettered,
    DeadLetterReason,
    EventBase,
    Expired,
    Failed,
    Heartbeat,
    Redriven,
    Rerouted,
    Reserved,
    Retried,
    Submitted,
)
from app.entrypoints.cli_common import app, run
from app.settings import Settings

if TYPE_CHECKING:
    from faststream.rabbit import RabbitBroker

TITLE = "Jobtrail event contract"
VERSION = "1"
DESCRIPTION = (
    "Lifecycle events of inference jobs. Producers publish each event persistent to the topic "
    "exchange jobtrail.events with routing key job.<type> and the header x-jobtrail-job-id; "
    "event_id is the idempotency key. See docs/protocol.md and docs/events.md."
)
# The document describes the contract, not one deployment: fixed, credential-free settings.
_CANONICAL = {
    "rabbit_url": "amqp://localhost:5672/",
    "log_url": "sqlite+aiosqlite:///:memory:",
    "sql_url": "sqlite+aiosqlite:///:memory:",
    "partitions": Settings.model_fields["partitions"].default,
    "policy_file": None,
}
_EMITTERS: tuple[tuple[type[EventBase], str], ...] = (
    (Submitted, "the Cloud: a job entered the queue (published before the job message)"),
    (Reserved, "a node: it took the job; starts the attempt's lease"),
    (Heartbeat, "a node: extends the lease of a long attempt"),
    (Completed, "a node: the attempt succeeded"),
    (Failed, "a node: the attempt failed (error code, message, retryable or not)"),
    (Expired, "Jobtrail or the broker: a lease or the job's TTL ran out"),
    (Retried, "Jobtrail: republished for attempt n+1 after its cooldown"),
    (Rerouted, "Jobtrail: republished to a fallback pool"),
    (DeadLettered, "Jobtrail or the broker: the job was quarantined"),
    (Cancelled, "an operator or the Cloud: the job is never republished"),
    (Redriven, "an operator: a dead-lettered job sent back to its queue as a new attempt"),
)
_cache: dict[str, Any] = {}


class JobMessage(BaseModel):
    """A job on a work queue: header x-jobtrail-attempt repeats the attempt, message_id is
    the id of the event that published it (drop a repeat)."""

    job_id: str
    attempt: int = Field(ge=1)
    payload: JsonValue = None


class DeadJobMessage(JobMessage):
    """A dead-lettered job parked on jobtrail.dead (header x-jobtrail-reason)."""

    reason: DeadLetterReason
    detail: str = ""


def _event_type(model: type[EventBase]) -> str:
    return str(model.model_fields["type"].default)


def _document_producers(broker: RabbitBroker) -> None:
    """Add publish operations that describe, without ever publishing, every message's schema."""
    from faststream.rabbit import ExchangeType, RabbitExchange, RabbitQueue

    events = RabbitExchange(EVENTS_EXCHANGE, type=ExchangeType.TOPIC, durable=True)
    for model, emitter in _EMITTERS:
        name = _event_type(model)
        broker.publisher(
            exchange=events,
            routing_key=f"job.{name}",
            title=f"jobtrail.events:job.{name}",
            description=f"`{name}`, published by {emitter}.",
            schema=model,
            persist=True,
        )
    broker.publisher(
        RabbitQueue("jobtrail.work.<pool>.<job_type>", durable=True),
        title="jobtrail.work.<pool>.<job_type>",
        description="A job for a node: from the Cloud (attempt 1) and from Jobtrail's "
        "retried / rerouted / redriven decisions (queues: durable, x-max-priority).",
        schema=JobMessage,
        persist=True,
    )
    broker.publisher(
        RabbitQueue(DEAD_QUEUE, durable=True),
        title=DEAD_QUEUE,
        description="Dead-lettered jobs, parked with their reason.",
        schema=DeadJobMessage,
        persist=True,
    )


async def event_contract() -> dict[str, Any]:
    """The AsyncAPI document as JSON-ready data (built once per process; connects nothing)."""
    if "document" not in _cache:
        tracking = build_tracking(Settings(**_CANONICAL))
        try:
            from faststream.rabbit import RabbitBroker
            from faststream.specification import AsyncAPI

            from app.entrypoints.worker import create_app, subscribe_partition  # loads FastStream

            stream = create_app(tracking)
            broker = stream.broker
            assert isinstance(broker, RabbitBroker)
            # A running tracker consumes its partitions on brokers of their own; the document
            # shows them all as one service's channels.
            for index in range(tracking.settings.partitions):
                subscribe_partition(broker, tracking, index)
            _document_producers(broker)
            spec = AsyncAPI(broker, title=TITLE, version=VERSION, description=DESCRIPTION)
            _cache["document"] = spec.to_specification().to_jsonable()
        finally:
            await tracking.readers.close()
    copy: dict[str, Any] = json.loads(json.dumps(_cache["document"]))  # callers may change it
    return copy


def render(document: dict[str, Any]) -> str:
    """The document as ``docs/asyncapi.json`` holds it: indented, keys sorted (stable)."""
    return json.dumps(document, indent=2, ensure_ascii=False, sort_keys=True) + "\n"


@app.command()
def asyncapi(
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write to this file instead of standard output."),
    ] = None,
) -> None:
    """Print (or write) the AsyncAPI 3.0 document of the event contract, as JSON."""

    async def work() -> int:
        text = render(await event_contract())
        if output is None:
            typer.echo(text, nl=False)
            return 0
        try:
            output.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"cannot write {output}: {exc.strerror or exc}") from exc
        typer.echo(f"wrote {output}", err=True)
        return 0

    run(work)

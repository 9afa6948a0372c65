"""A small client for the Cloud and for nodes: publish lifecycle events with correct envelopes.

Protocol (see docs/protocol.md): the Cloud publishes ``submitted`` (confirmed) before the job
message; a node acknowledges a work message when it publishes ``reserved`` — from then on the
lease, not RabbitMQ redelivery, decides retries; it then publishes ``heartbeat`` for long work and
finally ``completed`` or ``failed`` for the attempt named in the message it received.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import aio_pika
import aiormq

from app.adapters.rabbit import ClosingConnection
from app.domain.events import (
    Completed,
    Failed,
    Heartbeat,
    JobEvent,
    JobType,
    Priority,
    Reserved,
    Submitted,
)
from app.ports import PublishFailed
from app.ports.topology import EVENTS_EXCHANGE, JOB_ID_HEADER, work_queue_args

PRIORITY_OF_CLASS = {Priority.URGENT: 9, Priority.BULK: 3, Priority.TEST: 0}


def default_queue(pool: str, job_type: JobType | str) -> str:
    return f"jobtrail.work.{pool}.{JobType(job_type)}"


class JobtrailClient:
    """Publishes events to ``jobtrail.events``: persistent, confirmed, keyed ``job.<type>``."""

    def __init__(self, rabbit_url: str, source: str) -> None:
        self._url = rabbit_url
        self.source = source
        self._connection: aio_pika.abc.AbstractConnection | None = None
        self._channel: aio_pika.abc.AbstractChannel | None = None
        self._exchange: aio_pika.abc.AbstractExchange | None = None

    async def __aenter__(self) -> JobtrailClient:
        # A plain connection (the client lives for one use) that closes itself if it fails to
        # open: aio-pika would otherwise leave a never-awaited close() to the garbage collector.
        self._connection = await aio_pika.connect(self._url, connection_class=ClosingConnection)
        self._channel = await self._connection.channel(
            publisher_confirms=True, on_return_raises=True
        )
        self._exchange = await self._channel.declare_exchange(
            EVENTS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
        )
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._connection is not None:
            await self._connection.close()

    async def publish(self, event: JobEvent) -> None:
        """Publish one event, confirmed by the broker."""
        await self.publish_raw(event.model_dump_json().encode(), f"job.{event.type}", event.job_id)

    async def publish_raw(self, body: bytes, routing_key: str, job_id: str | None = None) -> None:
        """Publish bytes as an event message (for tools and tests that send hostile input)."""
        assert self._exchange is not None, "use the client as an async context manager"
        headers: dict[str, Any] = {JOB_ID_HEADER: job_id} if job_id else {}
        message = aio_pika.Message(
            body,
            headers=headers,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        try:
            await self._exchange.publish(message, routing_key=routing_key, mandatory=True)
        except (aiormq.exceptions.AMQPError, ConnectionError) as exc:
            raise PublishFailed(f"publish of {routing_key} failed: {exc!r}") from exc

    async def submit(
        self,
        job_id: str,
        *,
        job_type: str,
        model: str,
        priority: str,
        tenant: str,
        pool: str,
        payload: Any = None,
        queue: str | None = None,
        max_priority: int = 9,
        **overrides: Any,
    ) -> Submitted:
        """Record the submission, then publish the job message to its work queue."""
        queue = queue or default_queue(pool, job_type)
        event = Submitted(
            **self._envelope(job_id, 1),
            job_type=JobType(job_type),
            model=model,
            priority=Priority(priority),
            tenant=tenant,
            pool=pool,
            queue=queue,
            payload=payload,
            **overrides,
        )
        await self.publish(event)
        assert self._channel is not None
        await self._channel.declare_queue(
            queue, durable=True, arguments=work_queue_args(max_priority)
        )
        body = json.dumps({"job_id": job_id, "attempt": 1, "payload": payload}).encode()
        await self._channel.default_exchange.publish(
            aio_pika.Message(
                body,
                headers={"x-jobtrail-attempt": 1, JOB_ID_HEADER: job_id},
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                priority=PRIORITY_OF_CLASS[event.priority],
            ),
            routing_key=queue,
        )
        return event

    async def reserved(
        self, job_id: str, attempt: int, node_id: str, lease_seconds: float | None = None
    ) -> Reserved:
        event = Reserved(
            **self._envelope(job_id, attempt), node_id=node_id, lease_seconds=lease_seconds
        )
        await self.publish(event)
        return event

    async def heartbeat(self, job_id: str, attempt: int, node_id: str) -> Heartbeat:
        event = Heartbeat(**self._envelope(job_id, attempt), node_id=node_id)
        await self.publish(event)
        return event

    async def completed(
        self, job_id: str, attempt: int, node_id: str, duration_ms: int | None = None
    ) -> Completed:
        event = Completed(
            **self._envelope(job_id, attempt), node_id=node_id, duration_ms=duration_ms
        )
        await self.publish(event)
        return event

    async def failed(
        self,
        job_id: str,
        attempt: int,
        node_id: str,
        error_code: str,
        error_message: str = "",
        *,
        retryable: bool = True,
    ) -> Failed:
        event = Failed(
            **self._envelope(job_id, attempt),
            node_id=node_id,
            error_code=error_code,
            error_message=error_message,
            retryable=retryable,
        )
        await self.publish(event)
        return event

    def _envelope(self, job_id: str, attempt: int) -> dict[str, Any]:
        return {
            "event_id": uuid.uuid4(),
            "job_id": job_id,
            "occurred_at": datetime.now(UTC),
            "attempt": attempt,
            "source": self.source,
        }

"""The FastStream app: thin subscribers that hand raw messages to the ingestion service."""

from __future__ import annotations

import logging
from typing import Any

from faststream import AckPolicy, FastStream
from faststream.rabbit import (
    Channel,
    ExchangeType,
    QueueType,
    RabbitBroker,
    RabbitExchange,
    RabbitMessage,
    RabbitQueue,
)

from app.adapters import rabbit
from app.bootstrap import Tracking
from app.services.broker_signals import broker_dead_letter

log = logging.getLogger("jobtrail.worker")


async def _raw_body(message: Any) -> bytes:
    """Hand the body over undecoded: validation (and quarantine) is the service's job."""
    return bytes(message.body)


def create_app(tracking: Tracking) -> FastStream:
    """A FastStream app whose subscribers feed ``tracking`` (started separately)."""
    settings = tracking.settings
    broker = RabbitBroker(settings.rabbit_url, logger=log, log_level=logging.DEBUG)
    events = RabbitExchange(rabbit.EVENTS_EXCHANGE, type=ExchangeType.TOPIC, durable=True)
    tracker_queue = RabbitQueue(  # type: ignore[call-overload]
        rabbit.TRACKER_QUEUE,
        queue_type=QueueType.QUORUM,
        durable=True,
        arguments=rabbit.TRACKER_QUEUE_ARGS,
        routing_key=rabbit.EVENTS_ROUTING,
    )
    broker_dead = RabbitQueue(  # type: ignore[call-overload]
        rabbit.BROKER_DEAD_QUEUE,
        queue_type=QueueType.QUORUM,
        durable=True,
        arguments=rabbit.BROKER_DEAD_QUEUE_ARGS,
    )

    @broker.subscriber(
        tracker_queue,
        events,
        channel=Channel(prefetch_count=settings.prefetch),
        ack_policy=AckPolicy.NACK_ON_ERROR,
        decoder=_raw_body,
        title="jobtrail.tracker",
        description="Every lifecycle event, from jobtrail.events with routing key job.<type>.",
    )
    async def on_event(body: bytes) -> None:
        await tracking.ingestor.accept(body)

    @broker.subscriber(
        broker_dead,
        channel=Channel(prefetch_count=64),
        ack_policy=AckPolicy.NACK_ON_ERROR,
        decoder=_raw_body,
        title="jobtrail.broker-dead",
        description="Job messages that RabbitMQ dead-lettered from work queues (x-death).",
    )
    async def on_broker_dead_letter(body: bytes, message: RabbitMessage) -> None:
        headers = dict(message.headers or {})
        event, reason = broker_dead_letter(body, headers, tracking.clock.now())
        if event is None:
            assert reason is not None
            await tracking.publisher.quarantine(body, reason, {})
            return
        await tracking.batcher.submit(event)

    return FastStream(broker, logger=log)

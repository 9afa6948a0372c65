"""The broker topology every side agrees on: exchange, queue and header names, queue arguments.

The RabbitMQ adapter declares it, the FastStream subscribers and the client use it, and the
AsyncAPI document describes it (app/entrypoints/asyncapi_doc.py).
"""

from __future__ import annotations

from typing import Any

EVENTS_EXCHANGE = "jobtrail.events"
INTAKE_EXCHANGE = "jobtrail.intake"
RING_EXCHANGE = "jobtrail.ring"
LEGACY_PARTITION_EXCHANGE = "jobtrail.partitions"  # the durable ring of releases before 0.2
UNROUTED_EXCHANGE = "jobtrail.unrouted"
UNROUTED_QUEUE = "jobtrail.unrouted"
BARRIER_HEADER = "x-jobtrail-barrier"
QUARANTINE_QUEUE = "jobtrail.quarantine"
DEAD_QUEUE = "jobtrail.dead"
BROKER_DLX = "jobtrail.broker-dlx"
BROKER_DEAD_QUEUE = "jobtrail.broker-dead"
REASON_HEADER = "x-jobtrail-reason"
JOB_ID_HEADER = "x-jobtrail-job-id"
EVENTS_ROUTING = "job.#"
TRACKER_DELIVERY_LIMIT = 50

TRACKER_QUEUE_ARGS: dict[str, Any] = {
    "x-queue-type": "quorum",
    "x-single-active-consumer": True,
    "x-delivery-limit": TRACKER_DELIVERY_LIMIT,
    "x-dead-letter-exchange": "",
    "x-dead-letter-routing-key": QUARANTINE_QUEUE,
}
BROKER_DEAD_QUEUE_ARGS: dict[str, Any] = {"x-queue-type": "quorum"}
UNROUTED_QUEUE_ARGS: dict[str, Any] = {"x-queue-type": "quorum"}
INTAKE_EXCHANGE_ARGS: dict[str, Any] = {"alternate-exchange": UNROUTED_EXCHANGE}


def partition_queue(index: int) -> str:
    """The name of partition queue ``index`` (``jobtrail.tracker.<index>``)."""
    return f"jobtrail.tracker.{index}"


def work_queue_args(max_priority: int) -> dict[str, Any]:
    """Arguments of every work queue: priorities and broker dead-lettering to Jobtrail."""
    return {"x-max-priority": max_priority, "x-dead-letter-exchange": BROKER_DLX}

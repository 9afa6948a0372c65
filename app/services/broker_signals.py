"""Broker dead-lettering of work queues (x-death), translated into lifecycle events.

A job message that RabbitMQ dead-lettered (its TTL ran out, it was rejected, the queue was full,
or it hit a delivery limit) reaches Jobtrail through the broker dead-letter queue; it becomes a
``dead_lettered`` event from source ``broker``. The event id is derived from what the broker said,
so a redelivered signal is recorded once.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from app.domain.events import JOB_ID_PATTERN, DeadLettered, DeadLetterReason

BROKER_SOURCE = "broker"
_NAMESPACE = uuid.UUID("0c3b8d4e-55a1-4c1e-9f59-3a0f6d7e2b90")
_REASONS = {
    "expired": DeadLetterReason.TTL,
    "delivery_limit": DeadLetterReason.POISON,
    "rejected": DeadLetterReason.BROKER,
    "maxlen": DeadLetterReason.BROKER,
}


def broker_dead_letter(
    body: bytes, headers: Mapping[str, Any], now: datetime
) -> tuple[DeadLettered | None, str | None]:
    """The event a broker-dead-lettered job message stands for, or why it cannot be read."""
    try:
        message = json.loads(body)
        job_id = str(message["job_id"])
        attempt = int(message.get("attempt") or headers.get("x-jobtrail-attempt") or 1)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        return None, f"invalid_job_message: {exc.__class__.__name__}: {str(exc)[:200]}"
    death = _first_death(headers)
    reason = str(death.get("reason", "unknown"))
    queue = str(death.get("queue", "?"))
    count = death.get("count", 1)
    delivery_count = headers.get("x-delivery-count")
    detail = f"x-death reason={reason} queue={queue} count={count}"
    if delivery_count is not None:
        detail += f" x-delivery-count={delivery_count}"
    signal_id = uuid.uuid5(_NAMESPACE, f"{job_id}|{attempt}|{reason}|{queue}|{count}")
    try:
        event = DeadLettered(
            event_id=signal_id,
            job_id=job_id,
            occurred_at=_death_time(death, now),
            attempt=max(attempt, 1),
            source=BROKER_SOURCE,
            reason=_REASONS.get(reason, DeadLetterReason.BROKER),
            detail=detail,
        )
    except ValidationError as exc:
        count = exc.error_count()
        return None, f"invalid_job_message: {count} invalid fields (job_id: {JOB_ID_PATTERN})"
    return event, None


def _first_death(headers: Mapping[str, Any]) -> Mapping[str, Any]:
    deaths = headers.get("x-death")
    if isinstance(deaths, list | tuple) and deaths and isinstance(deaths[0], Mapping):
        return deaths[0]
    return {}


def _death_time(death: Mapping[str, Any], now: datetime) -> datetime:
    moment = death.get("time")
    if isinstance(moment, datetime):
        return moment if moment.tzinfo else moment.replace(tzinfo=now.tzinfo)
    return now

"""Isolated RabbitMQ virtual hosts and fast confirmed publishing for the benchmark."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from urllib.parse import quote, urlsplit, urlunsplit

import aio_pika
import httpx

IN_FLIGHT = 1000


@asynccontextmanager
async def scratch_vhost(rabbit_url: str, api_url: str) -> AsyncIterator[str]:
    """A fresh virtual host (deleted afterwards) and its AMQP URL."""
    parts = urlsplit(rabbit_url)
    auth = (parts.username or "guest", parts.password or "guest")
    vhost = f"jobtrail-bench-{uuid.uuid4().hex[:8]}"
    async with httpx.AsyncClient(base_url=api_url, auth=auth, timeout=30) as api:
        (await api.put(f"/vhosts/{vhost}")).raise_for_status()
        perms = {"configure": ".*", "write": ".*", "read": ".*"}
        (await api.put(f"/permissions/{vhost}/{auth[0]}", json=perms)).raise_for_status()
        try:
            yield urlunsplit(parts._replace(path="/" + quote(vhost, safe="")))
        finally:
            await api.delete(f"/vhosts/{vhost}")


async def publish_confirmed(
    channel: aio_pika.abc.AbstractChannel,
    exchange: aio_pika.abc.AbstractExchange,
    bodies: Sequence[tuple[bytes, str, dict[str, str]]],
) -> None:
    """Publish (body, routing key, headers) persistently with up to IN_FLIGHT unconfirmed."""
    del channel
    for start in range(0, len(bodies), IN_FLIGHT):
        chunk = bodies[start : start + IN_FLIGHT]
        await asyncio.gather(
            *(
                exchange.publish(
                    aio_pika.Message(
                        body,
                        headers=dict(headers),
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        content_type="application/json",
                    ),
                    routing_key=key,
                )
                for body, key, headers in chunk
            )
        )

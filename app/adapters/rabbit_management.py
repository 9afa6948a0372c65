"""RabbitMQ's management HTTP API: depth and consumers of Jobtrail's work queues.

The dashboard's queue-health panel reads it when it is reachable. Credentials come from the
management URL or, by default, from the AMQP URL; they are never part of an error message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import httpx

WORK_QUEUE_PATTERN = r"^jobtrail\.work\."
MAX_QUEUES = 500
DEFAULT_GUEST = ("guest", "guest")
_COLUMNS = "name,messages,messages_ready,messages_unacknowledged,consumers,state"


class ManagementUnavailable(Exception):
    """The management API could not be reached or refused the request."""


@dataclass(frozen=True, slots=True)
class QueueHealth:
    """One queue as the management API reports it."""

    name: str
    messages: int
    ready: int
    unacked: int
    consumers: int
    state: str


@dataclass(frozen=True, slots=True)
class QueuePage:
    """The work queues found (at most ``MAX_QUEUES``) and how many matched in all."""

    queues: list[QueueHealth]
    total: int


def _credentials(user: str | None, password: str | None) -> tuple[str, str] | None:
    if user is None:
        return None
    return unquote(user), unquote(password or "")


def _vhost(amqp_path: str) -> str:
    name = unquote(amqp_path[1:]) if amqp_path.startswith("/") else unquote(amqp_path)
    return name or "/"


class RabbitManagement:
    """Reads queue statistics of one virtual host from the management API."""

    def __init__(
        self, api_url: str, vhost: str, auth: tuple[str, str], *, timeout: float = 2.0
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.vhost = vhost
        self._auth = auth
        self._timeout = timeout

    def __repr__(self) -> str:
        return f"RabbitManagement({self.api_url!r}, vhost={self.vhost!r})"

    @classmethod
    def from_urls(cls, amqp_url: str, api_url: str | None = None) -> RabbitManagement:
        """The API of ``api_url``, or of the AMQP URL's host on port 15672 (15671 for amqps),
        with the AMQP URL's credentials and virtual host unless ``api_url`` names its own user."""
        amqp = urlsplit(amqp_url)
        auth = _credentials(amqp.username, amqp.password) or DEFAULT_GUEST
        if api_url is None:
            secure = amqp.scheme == "amqps"
            host = amqp.hostname or "127.0.0.1"
            shown = f"[{host}]" if ":" in host else host
            port = 15671 if secure else 15672
            base = f"{'https' if secure else 'http'}://{shown}:{port}/api"
            return cls(base, _vhost(amqp.path), auth)
        given = urlsplit(api_url)
        netloc = given.netloc.rpartition("@")[2]
        path = given.path if given.path not in ("", "/") else "/api"
        base = urlunsplit((given.scheme, netloc, path, "", ""))
        return cls(base, _vhost(amqp.path), _credentials(given.username, given.password) or auth)

    async def work_queues(self) -> QueuePage:
        """Jobtrail's work queues in this virtual host, by name; raises ManagementUnavailable."""
        params: dict[str, str | int] = {
            "page": 1,
            "page_size": MAX_QUEUES,
            "name": WORK_QUEUE_PATTERN,
            "use_regex": "true",
            "columns": _COLUMNS,
        }
        url = f"{self.api_url}/queues/{quote(self.vhost, safe='')}"
        try:
            async with httpx.AsyncClient(auth=self._auth, timeout=self._timeout) as client:
                response = await client.get(url, params=params)
        except httpx.HTTPError as exc:
            reason = f"cannot reach the management API ({type(exc).__name__})"
            raise ManagementUnavailable(reason) from exc
        if response.status_code != 200:
            raise ManagementUnavailable(f"the management API answered {response.status_code}")
        try:
            body = response.json()
            queues = sorted((_queue(item) for item in body["items"]), key=lambda q: q.name)
            return QueuePage(queues, int(body.get("filtered_count", len(queues))))
        except (ValueError, KeyError, TypeError) as exc:
            raise ManagementUnavailable("the management API answered something unexpected") from exc


def _queue(item: dict[str, Any]) -> QueueHealth:
    return QueueHealth(
        name=str(item["name"]),
        messages=int(item.get("messages") or 0),
        ready=int(item.get("messages_ready") or 0),
        unacked=int(item.get("messages_unacknowledged") or 0),
        consumers=int(item.get("consumers") or 0),
        state=str(item.get("state") or "unknown"),
    )

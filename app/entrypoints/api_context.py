"""What the API's routes read from, shared by every router module without importing the app."""

from __future__ import annotations

from dataclasses import dataclass

from app.bootstrap import Readers
from app.bootstrap.metrics import Metrics
from app.ports import Clock, JobQueries
from app.services.health import Health


@dataclass
class ApiContext:
    """What the routes read from."""

    readers: Readers
    queries: JobQueries
    health: Health | None
    metrics: Metrics
    clock: Clock

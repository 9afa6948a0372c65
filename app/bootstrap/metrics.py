"""Prometheus metrics of one Jobtrail process, in a registry of its own.

Label values are bounded: job ids never become labels, API latency is labelled by route template,
and a label fed from the outside (a quarantine reason) falls back to ``other`` when it is not a
short identifier or when too many distinct values were already seen.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from app.domain.chain import RecordedEvent
from app.domain.events import (
    DERIVED_TYPES,
    EVENT_TYPES,
    DeadLettered,
    DeadLetterReason,
    JobEvent,
    JobType,
    Priority,
)
from app.domain.sla import Measure
from app.domain.state import JobState
from app.ports import ProjectionUpdate
from app.services.latency import fresh_samples

if TYPE_CHECKING:
    from app.bootstrap import Tracking

OTHER = "other"
MAX_LABEL_VALUES = 64
QUARANTINE_REASONS = ("invalid_utf8", "invalid_json", "invalid_event", "refused_by_store")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_LABEL = re.compile(r"^[a-z0-9_.:-]{1,64}$")
UNMATCHED_ROUTE = "unmatched"
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
PROJECTION_LAG_HELP = (
    "From the oldest event of the last committed batch occurring to its projection."
)
JOB_LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600)
JOB_LATENCY_HELP = {
    Measure.WAIT: "From an attempt being queued (submitted, retried, rerouted) to its reservation.",
    Measure.RUN: "From an attempt's reservation to its completion, failure or expiry.",
    Measure.END_TO_END: "From a job's submission to its completion.",
}
TIMER_LAG_HELP = "How late the most overdue deadline of the last timer pass fired."


class _Bounded:
    """Admits at most ``limit`` distinct, identifier-shaped label values; the rest are OTHER."""

    def __init__(self, known: Iterable[str], limit: int = MAX_LABEL_VALUES) -> None:
        self._seen = set(known)
        self._limit = limit

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        if not _LABEL.fullmatch(value) or len(self._seen) >= self._limit:
            return OTHER
        self._seen.add(value)
        return value


class Metrics:
    """The metrics the tracker and the API update, and their text exposition for /metrics."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        reasons = [r.value for r in DeadLetterReason]
        kinds = sorted(DERIVED_TYPES)
        self._events = self._counter(
            "jobtrail_events_recorded", "Events appended to the log, by type.", "type", EVENT_TYPES
        )
        self._decisions = self._counter(
            "jobtrail_decisions", "Events Jobtrail decided itself, by kind.", "kind", kinds
        )
        self._dead_letters = self._counter(
            "jobtrail_dead_letters", "Jobs dead-lettered, by reason.", "reason", reasons
        )
        self._quarantined = self._counter(
            "jobtrail_quarantined_inputs",
            "Inputs quarantined, by reason.",
            "reason",
            QUARANTINE_REASONS,
        )
        self._misrouted = self._counter(
            "jobtrail_misrouted_events",
            "Events recorded whose routing key was not job.<their type>, by type.",
            "type",
            EVENT_TYPES,
        )
        self._projection_lag = Gauge(
            "jobtrail_projection_lag_seconds", PROJECTION_LAG_HELP, registry=self.registry
        )
        self._timer_lag = Gauge(
            "jobtrail_timer_lag_seconds", TIMER_LAG_HELP, registry=self.registry
        )
        self._requests = Histogram(
            "jobtrail_api_request_duration_seconds",
            "API request latency, by method, route template and status code.",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._latency = {
            measure: Histogram(
                f"jobtrail_job_{measure}_seconds",
                help_text,
                ["pool", "job_type", "priority"],
                buckets=JOB_LATENCY_BUCKETS,
                registry=self.registry,
            )
            for measure, help_text in JOB_LATENCY_HELP.items()
        }
        self._pool = _Bounded(())
        self._job_type = _Bounded(JobType, limit=len(JobType))
        self._priority = _Bounded(Priority, limit=len(Priority))
        # Closed sets: a value outside them is a bug or a newer producer, counted as OTHER.
        self._event_type = _Bounded(EVENT_TYPES, limit=len(EVENT_TYPES))
        self._decision_kind = _Bounded(kinds, limit=len(kinds))
        self._dead_reason = _Bounded(reasons, limit=len(reasons))
        self._quarantine_reason = _Bounded(QUARANTINE_REASONS)
        self._method = _Bounded(HTTP_METHODS, limit=len(HTTP_METHODS))

    def _counter(self, name: str, doc: str, label: str, known: Iterable[str]) -> Counter:
        counter = Counter(name, doc, [label], registry=self.registry)
        for value in known:
            counter.labels(value)  # every known series exists (at 0) from the start
        return counter

    def record_events(self, types: Iterable[str]) -> None:
        """Count events appended to the log (call with the types of the new, non-duplicate ones)."""
        for event_type in types:
            self._events.labels(self._event_type(event_type)).inc()

    def recorded(self, events: Iterable[JobEvent]) -> None:
        """``record_events`` for incoming events, also counting broker-reported dead letters."""
        events = list(events)
        self.record_events(event.type for event in events)
        for event in events:
            if isinstance(event, DeadLettered):
                self.dead_letter(event.reason)

    def decision(self, kind: str) -> None:
        """Count one decision (``expired``, ``retried``, ``rerouted``, ``dead_lettered``)."""
        self._decisions.labels(self._decision_kind(kind)).inc()

    def on_decision(self, event: JobEvent, state: JobState) -> None:
        """A ``Tracker.on_decision`` listener: the decision, its recorded event, a dead letter."""
        del state
        self.decision(event.type)
        self.record_events([event.type])
        if isinstance(event, DeadLettered):
            self.dead_letter(event.reason)

    def dead_letter(self, reason: str) -> None:
        """Count one dead-lettered job by its reason."""
        self._dead_letters.labels(self._dead_reason(str(reason))).inc()

    def misrouted(self, event_type: str) -> None:
        """Count one event whose routing key contradicts its type (``Ingestor.misrouted``)."""
        self._misrouted.labels(self._event_type(event_type)).inc()

    def quarantined(self, reason: str) -> None:
        """Count one quarantined input (an ``Ingestor.quarantined`` callback)."""
        self._quarantined.labels(self._quarantine_reason(reason)).inc()

    def on_projected(self, update: ProjectionUpdate, events: Sequence[RecordedEvent]) -> None:
        """A ``Tracker.on_projected`` listener: the waits, runs and end-to-end times that the
        newly projected events completed, labelled by pool, job type and priority (no job id)."""
        for sample in fresh_samples(update.job, update.attempts, events):
            key = sample.key
            self.observe_latency(
                sample.measure, key.pool, key.job_type, key.priority, sample.seconds
            )

    def observe_latency(
        self, measure: Measure, pool: str, job_type: str, priority: str, seconds: float
    ) -> None:
        """Observe one wait, run or end-to-end time (a negative one, from a clock step, as 0)."""
        labels = (self._pool(pool), self._job_type(job_type), self._priority(priority))
        self._latency[measure].labels(*labels).observe(max(0.0, seconds))

    def projection_lag(self, seconds: float) -> None:
        """Set the projection lag (negative values, from skewed producer clocks, count as 0)."""
        self._projection_lag.set(max(0.0, seconds))

    def timer_lag(self, seconds: float) -> None:
        """Set how late the last timer pass fired its most overdue deadline (0 when none due)."""
        self._timer_lag.set(max(0.0, seconds))

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Record one API request under its route template (never its concrete path)."""
        self._requests.labels(self._method(method), route, str(status)).observe(seconds)

    def watch(self, tracking: Tracking) -> None:
        """Hook these metrics into a tracker's events, decisions, quarantine and timers."""
        tracking.tracker.on_decision = self.on_decision
        tracking.tracker.on_recorded = self._recorded_batch
        tracking.tracker.on_timer_lag = self.timer_lag
        tracking.tracker.on_projected = self.on_projected
        tracking.ingestor.quarantined = self.quarantined
        tracking.ingestor.misrouted = self.misrouted
        Gauge(
            "jobtrail_outbox_parked",
            "Outbox messages the broker refused while taking others; retried with backoff.",
            registry=self.registry,
        ).set_function(lambda: tracking.relay.parked)
        Gauge(
            "jobtrail_ring_barriers_led",
            "Partition-ring barriers this tracker led to the end (one after each broker start).",
            registry=self.registry,
        ).set_function(lambda: tracking.ring.barriers)
        Gauge(
            "jobtrail_partitions_consumed",
            "Partition queues this tracker consumes now (its share among the live trackers).",
            registry=self.registry,
        ).set_function(lambda: len(c.owned()) if (c := tracking.coordinator) else 0)
        Gauge(
            "jobtrail_trackers_live",
            "Trackers sharing the partitions, as this one last saw them (heartbeats).",
            registry=self.registry,
        ).set_function(lambda: len(c.live) if (c := tracking.coordinator) else 0)
        Gauge(
            "jobtrail_partitions_handed_over",
            "Partitions this tracker handed to another tracker since it started.",
            registry=self.registry,
        ).set_function(lambda: c.moves if (c := tracking.coordinator) else 0)

    def _recorded_batch(self, events: Sequence[JobEvent], now: datetime) -> None:
        self.recorded(events)
        if events:
            self.projection_lag((now - min(e.occurred_at for e in events)).total_seconds())

    def render(self) -> bytes:
        """The Prometheus text exposition of this registry."""
        return generate_latest(self.registry)


Scope = dict[str, Any]
Receive = Any
Send = Any


class RequestTimer:
    """ASGI middleware: time each HTTP request into ``Metrics`` by its route template."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_with_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or UNMATCHED_ROUTE
            elapsed = time.perf_counter() - started
            self.metrics.observe_request(scope["method"], template, status, elapsed)

"""Routing plugins at work: the fleet snapshot they are given, and asking them safely.

``FleetWindow`` is what the tracker keeps of the fleet, fed by the events it records (no
database query per decision): per pool, the last ``size`` attempts that ended (completed, or
failed, or their lease ran out) and the last ``size`` waits from being queued to being reserved.
``Router`` asks a job's routing plugin when its cooldown has no recorded answer yet, checks the
answer, falls back to the policy's rule when the plugin raises, overruns its time or answers
nonsense, and hands the answer back as a ``routed`` decision to append: the log, not the
router, remembers it.
"""

from __future__ import annotations

import bisect
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from app.domain.chain import RecordedEvent
from app.domain.decide import decide, routed, routing_plugin_for, routing_request
from app.domain.events import (
    Completed,
    Expired,
    ExpiryReason,
    Failed,
    JobEvent,
    PoolFigures,
    Redriven,
    Rerouted,
    Reserved,
    Retried,
    RoutingRecord,
    Submitted,
)
from app.domain.policy import Policy
from app.domain.routing import RoutingChoice, RoutingPlugin, RoutingRequest, refusal
from app.domain.state import JobState

log = logging.getLogger("jobtrail.routing")

WINDOW_SIZE = 100
"""Recent attempts (and waits) per pool a fleet snapshot is made of."""
PLUGIN_TIMEOUT_S = 0.5
MAX_PENDING = 100_000
"""Jobs whose queued attempt is remembered at once; the oldest go first."""

_Key = tuple[str, int]


@dataclass
class _Series:
    """One pool's figures by (job, attempt): re-observing an attempt replaces it."""

    values: OrderedDict[_Key, tuple[datetime, float]] = field(default_factory=OrderedDict)
    ordered: list[tuple[datetime, float]] | None = None

    def put(self, key: _Key, at: datetime, value: float, keep: int | None) -> None:
        self.values[key] = (at, value)
        self.values.move_to_end(key)
        while keep is not None and len(self.values) > keep:
            self.values.popitem(last=False)
        self.ordered = None

    def last_before(self, at: datetime, size: int) -> list[float]:
        if self.ordered is None:
            self.ordered = sorted(self.values.values())
        end = bisect.bisect_left(self.ordered, (at,))
        return [value for _, value in self.ordered[max(end - size, 0) : end]]


@dataclass
class FleetWindow:
    """Recent outcomes and waits per pool, fed by recorded events.

    ``keep`` bounds what a live tracker holds (None keeps everything, which a what-if replay
    needs to ask about any past instant).
    """

    size: int = WINDOW_SIZE
    keep: int | None = 2 * WINDOW_SIZE
    _outcomes: dict[str, _Series] = field(default_factory=dict)
    _waits: dict[str, _Series] = field(default_factory=dict)
    _queued: OrderedDict[_Key, tuple[str, datetime]] = field(default_factory=OrderedDict)

    def observe(self, events: Iterable[RecordedEvent]) -> None:
        """Take in one job's recorded events, in order (seeing one twice changes nothing)."""
        for recorded in events:
            event, at = recorded.event, recorded.recorded_at
            key = (event.job_id, event.attempt)
            if isinstance(event, Submitted | Retried | Rerouted | Redriven):
                self._queued[key] = (event.pool, at)
                while len(self._queued) > MAX_PENDING:
                    self._queued.popitem(last=False)
                continue
            queued = self._queued.get(key)
            if queued is None:
                continue
            pool, since = queued
            if isinstance(event, Reserved):
                wait = max((at - since).total_seconds(), 0.0)
                self._series(self._waits, pool).put(key, at, wait, self.keep)
            elif isinstance(event, Completed | Failed) or (
                isinstance(event, Expired) and event.reason is ExpiryReason.LEASE
            ):
                failed = 0.0 if isinstance(event, Completed) else 1.0
                self._series(self._outcomes, pool).put(key, at, failed, self.keep)
                del self._queued[key]  # the attempt ended: nothing more to learn from it

    def snapshot(self, at: datetime) -> tuple[PoolFigures, ...]:
        """Each pool's failure rate and mean wait over its last attempts before ``at``."""
        figures = []
        for pool in sorted(self._outcomes.keys() | self._waits.keys()):
            outcomes = self._last(self._outcomes, pool, at)
            waits = self._last(self._waits, pool, at)
            if not outcomes and not waits:
                continue
            figures.append(
                PoolFigures(
                    pool=pool,
                    outcomes=len(outcomes),
                    failure_rate=round(sum(outcomes) / len(outcomes), 4) if outcomes else 0.0,
                    wait_seconds=round(sum(waits) / len(waits), 3) if waits else None,
                )
            )
        return tuple(figures)

    def _last(self, series: dict[str, _Series], pool: str, at: datetime) -> list[float]:
        found = series.get(pool)
        return found.last_before(at, self.size) if found is not None else []

    @staticmethod
    def _series(series: dict[str, _Series], pool: str) -> _Series:
        found = series.get(pool)
        if found is None:
            found = series[pool] = _Series()
        return found


def decide_routed(
    state: JobState, now: datetime, policy: Policy, router: Router | None
) -> tuple[JobEvent, ...]:
    """``decide``, with ``router`` (if any) first recording a routing plugin's answer."""
    return decide(state, now, policy) if router is None else router.decide(state, now, policy)


@dataclass(frozen=True, slots=True)
class LoadedPlugin:
    """A routing plugin as the composition root found it: its function and its version."""

    route: RoutingPlugin
    version: str


@dataclass
class Router:
    """Asks jobs' routing plugins, once per cooldown, and never lets one stop the tracker.

    ``only`` routes every job with that plugin, whatever the policy names (``whatif --routing``).
    """

    plugins: Mapping[str, LoadedPlugin]
    fleet: FleetWindow = field(default_factory=FleetWindow)
    only: str | None = None
    timeout_s: float = PLUGIN_TIMEOUT_S

    def decide(self, state: JobState, now: datetime, policy: Policy) -> tuple[JobEvent, ...]:
        """What to record for the job at ``now``: its plugin's answer (a ``routed`` event) if
        its cooldown needs one and has none yet, asked with the fleet as it was when the
        cooldown began; else what ``decide`` says (which follows a recorded answer)."""
        name = routing_plugin_for(state, policy, self.only)
        if name is None or state.cooling_since is None:
            return decide(state, now, policy)
        fleet = self.fleet.snapshot(state.cooling_since)
        return (routed(state, now, self._ask(name, routing_request(state, policy, fleet))),)

    def _ask(self, name: str, request: RoutingRequest) -> RoutingRecord:
        plugin = self.plugins.get(name)
        version = plugin.version if plugin is not None else "?"
        choice, why = request.rule, None
        if plugin is None:
            why = "is not installed"
        else:
            answer, why = self._call(plugin, request)
            why = why or refusal(answer, request)
            if why is None and isinstance(answer, RoutingChoice):
                choice = answer
        if why is not None:
            log.warning(
                "routing plugin %s %s %s; the policy decides for job %s",
                name,
                version,
                why,
                request.state.job_id,
            )
        return RoutingRecord(
            plugin=name,
            version=version,
            fleet=request.fleet,
            pool=choice.pool,
            cooldown_seconds=choice.cooldown.total_seconds(),
            fallback=why,
        )

    def _call(self, plugin: LoadedPlugin, request: RoutingRequest) -> tuple[object, str | None]:
        """The plugin's answer, or why there is none. It runs in a daemon thread: one that
        hangs is left behind (and never keeps the process from exiting), not waited for."""
        answers: list[object] = []
        errors: list[Exception] = []

        def ask() -> None:
            try:
                answers.append(plugin.route(request))
            except Exception as exc:  # a plugin's bug must never stop the tracker
                errors.append(exc)

        thread = threading.Thread(target=ask, name="jobtrail-routing", daemon=True)
        thread.start()
        thread.join(self.timeout_s)
        if thread.is_alive():
            return None, f"did not answer within {self.timeout_s} s"
        if errors:
            return None, f"raised {type(errors[0]).__name__}: {errors[0]}"[:500]
        return answers[0], None

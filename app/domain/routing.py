"""Routing plugins' contract: what a plugin is asked, what it may answer, and which answers count.

A routing plugin is a pure function ``(RoutingRequest) -> RoutingChoice``, registered under the
entry-point group ``jobtrail.routing`` and named in the policy file. It is asked once when a job
starts cooling down after a failure; its answer, with the fleet snapshot it was given, is
recorded at once in a ``routed`` event (``RoutingRecord``, copied into the ``retried`` /
``rerouted`` event that follows), so folding, replay, rebuild and a restarted tracker never call
it again. This module only describes and checks; the plugins are loaded
by the composition root.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from app.domain.events import PoolFigures
from app.domain.state import JobState

ENTRY_POINT_GROUP = "jobtrail.routing"
MAX_COOLDOWN = timedelta(days=366)


@dataclass(frozen=True, slots=True)
class RoutingChoice:
    """Where a job goes next and after how long: ``pool`` None stays on the job's pool."""

    pool: str | None
    cooldown: timedelta


@dataclass(frozen=True, slots=True)
class RoutingRequest:
    """What a plugin is given: the job's folded state, the fleet, and the policy's own answer.

    ``candidates`` are the pools the job may move to (its fallback pools); ``rule`` is what the
    policy alone would do, which a plugin may keep in part (its cooldown, say).
    """

    state: JobState
    fleet: tuple[PoolFigures, ...]
    candidates: tuple[str, ...]
    rule: RoutingChoice

    def figures(self, pool: str) -> PoolFigures | None:
        """The fleet's figures for ``pool``, if the fleet has seen it."""
        return next((f for f in self.fleet if f.pool == pool), None)


RoutingPlugin = Callable[[RoutingRequest], RoutingChoice]


def refusal(answer: object, request: RoutingRequest) -> str | None:
    """Why a plugin's answer cannot be used (wrong type, unknown pool, bad cooldown); or None."""
    if not isinstance(answer, RoutingChoice):
        return f"answered {type(answer).__name__}, not a RoutingChoice"
    if answer.pool is not None and answer.pool not in (*request.candidates, request.state.pool):
        return f"answered pool {answer.pool!r}, which is not one of the job's pools"
    if not isinstance(answer.cooldown, timedelta):
        return f"answered cooldown {answer.cooldown!r}, not a timedelta"
    if answer.cooldown < timedelta(0):
        return f"answered a negative cooldown ({answer.cooldown.total_seconds()} s)"
    if answer.cooldown > MAX_COOLDOWN:
        return f"answered a cooldown over {MAX_COOLDOWN.days} days"
    return None

"""``least-failing``: the routing plugin Jobtrail ships (entry point ``jobtrail.routing``).

It moves a failed job to the fallback pool that failed least recently, when that pool fails
less often than the job's own pool; otherwise the job stays. The cooldown is the policy's. A
pool the fleet has not seen end an attempt yet is taken only when no seen pool is left, and a
job whose own pool is unseen moves when the policy's rule says so.
"""

from __future__ import annotations

from app.domain.routing import RoutingChoice, RoutingRequest


def route(request: RoutingRequest) -> RoutingChoice:
    """Stay, or move to the least-failing fallback pool; keep the policy's cooldown."""
    if not request.candidates:
        return request.rule
    best = min(request.candidates, key=lambda pool: _rank(request, pool))
    best_rate, here_rate = _rate(request, best), _rate(request, request.state.pool)
    if here_rate is None:
        moves = request.rule.pool is not None
    else:
        moves = best_rate is not None and best_rate < here_rate
    return RoutingChoice(pool=best if moves else None, cooldown=request.rule.cooldown)


def _rate(request: RoutingRequest, pool: str | None) -> float | None:
    figures = request.figures(pool) if pool is not None else None
    return figures.failure_rate if figures is not None and figures.outcomes else None


def _rank(request: RoutingRequest, pool: str) -> tuple[bool, float, int]:
    """Seen pools first, by failure rate, then in the policy's fallback order."""
    rate = _rate(request, pool)
    return (rate is None, rate or 0.0, request.candidates.index(pool))

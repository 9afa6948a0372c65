"""Operators' latency endpoints: ``GET /sla`` (waits, runs, end to end against the policy's
targets) and ``GET /fairness`` (tenants' shares and waits per pool), over a recorded-at window."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, cast

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from app.entrypoints.api_auth import require_reader
from app.entrypoints.api_edge import READ_ERRORS, ApiError, EdgeRoute, errors
from app.ports import Instant
from app.services.analysis import Window
from app.services.sla import (
    Dimension,
    Source,
    fairness_from_log,
    parse_by,
    report_window,
    sla,
)

if TYPE_CHECKING:
    from app.entrypoints.api_context import ApiContext

latency = APIRouter(
    dependencies=[Depends(require_reader)],
    tags=["operators"],
    responses=errors(*READ_ERRORS),
    route_class=EdgeRoute,
)


class WindowOut(BaseModel):
    since: str | None
    until: str | None


class MeasureOut(BaseModel):
    """One measure of one group, in seconds; targets and ``met`` only when the group's jobs
    share one set of targets."""

    count: int = Field(ge=0)
    p50: float | None
    p95: float | None
    p99: float | None
    targets: dict[str, float] | None
    met: dict[str, bool] | None
    breaches: dict[str, int]


class LatencyGroupOut(BaseModel):
    """One group: the dimensions asked for with ``by``, then its three measures."""

    pool: str | None = None
    job_type: str | None = None
    priority: str | None = None
    tenant: str | None = None
    wait: MeasureOut
    run: MeasureOut
    end_to_end: MeasureOut


class SlaOut(BaseModel):
    window: WindowOut
    source: Source
    by: list[Dimension]
    breaches: int = Field(ge=0)
    groups: list[LatencyGroupOut]


class TenantOut(BaseModel):
    tenant: str
    submitted: int = Field(ge=0)
    submitted_share: float | None
    started: int = Field(ge=0)
    started_share: float | None
    wait_p95: float | None
    wait_p95_ratio: float | None
    others_wait_p95: float | None
    starved: bool


class PoolFairnessOut(BaseModel):
    pool: str
    submitted: int = Field(ge=0)
    started: int = Field(ge=0)
    wait_p95: float | None
    tenants: list[TenantOut]


class StarvedOut(BaseModel):
    pool: str
    tenant: str
    wait_p95: float | None
    others_wait_p95: float | None


class DashboardLatencyOut(SlaOut):
    """The dashboard's latency panel: ``GET /sla`` by pool and priority from the projection,
    and the tenants starved by their waits."""

    minutes: int = Field(ge=1)
    starved: list[StarvedOut]


class FairnessOut(BaseModel):
    window: WindowOut
    starvation_factor: float
    min_attempts: int
    starved: list[StarvedOut]
    pools: list[PoolFairnessOut]


def _context(request: Request) -> ApiContext:
    return cast("ApiContext", request.app.state.jobtrail)


SinceQuery = Annotated[
    Instant | None,
    Query(description="Window start, recorded at or after (ISO-8601); an hour before until."),
]
UntilQuery = Annotated[
    Instant | None, Query(description="Window end, recorded before (ISO-8601); now by default.")
]


def _window(ctx: ApiContext, since: Instant | None, until: Instant | None) -> Window:
    try:
        return report_window(since, until, ctx.clock.now())
    except ValueError as exc:
        given = {"since": since, "until": until}
        info = {k: v.isoformat() if v else None for k, v in given.items()}
        raise ApiError(422, str(exc), info) from None


@latency.get(
    "/sla", summary="Waits, runs and end-to-end times against targets", response_model=SlaOut
)
async def get_sla(
    request: Request,
    since: SinceQuery = None,
    until: UntilQuery = None,
    by: Annotated[
        str | None,
        Query(
            max_length=100,
            description="Group by these, comma-separated: pool, job_type, priority, tenant "
            "(all four by default).",
        ),
    ] = None,
    source: Annotated[
        Source, Query(description="Fold the log, or read the projection's attempt rows.")
    ] = Source.LOG,
) -> JSONResponse:
    """p50/p95/p99 and counts per group of each measure, and the samples over their targets."""
    ctx = _context(request)
    window = _window(ctx, since, until)
    try:
        dimensions = parse_by(by)
    except ValueError as exc:
        raise ApiError(422, str(exc), {"by": by}) from None
    readers = ctx.readers
    report = await sla(source, readers.log, ctx.queries, readers.policy, window, dimensions)
    return JSONResponse(report.as_dict())


@latency.get(
    "/fairness",
    summary="Tenants' shares and waits per pool; starved tenants",
    response_model=FairnessOut,
)
async def get_fairness(
    request: Request,
    since: SinceQuery = None,
    until: UntilQuery = None,
    factor: Annotated[
        float | None,
        Query(
            gt=1,
            le=1000,
            description="Starved when a tenant's wait p95 exceeds the other tenants' in its pool "
            "this many times "
            "(the policy's [fairness] starvation_factor by default).",
        ),
    ] = None,
) -> JSONResponse:
    """Each tenant's share of a pool's submissions and started attempts, its wait p95 against
    the pool's, and the tenants starved by the factor."""
    ctx = _context(request)
    window = _window(ctx, since, until)
    report = await fairness_from_log(ctx.readers.log, ctx.readers.policy, window, factor)
    return JSONResponse(report.as_dict())

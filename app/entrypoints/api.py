"""The HTTP API for the Cloud (read side): jobs, histories, lists, stats, health and metrics.

``create_api`` builds the FastAPI app from what the composition root made; nothing is built at
import time. Every error is JSON ``{"error": ..., "detail": ...}`` (see ``api_edge``): bad input
is a 4xx (422 for a bad parameter or an unknown one, 404 for an unknown job, 413 for an oversize
body), a store outage a 503; user values only ever reach the stores as bound parameters.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, cast

from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from app.bootstrap import Readers, open_queries, system_clock
from app.bootstrap.metrics import Metrics, RequestTimer
from app.domain.events import JOB_ID_PATTERN, MAX_PAYLOAD_BYTES
from app.entrypoints.api_audit import audits
from app.entrypoints.api_auth import Tokens, install_tokens, load_tokens, require_reader
from app.entrypoints.api_context import ApiContext
from app.entrypoints.api_edge import (
    READ_ERRORS,
    ApiError,
    EdgeRoute,
    answers,
    error_response,
    errors,
    install_error_handlers,
)
from app.entrypoints.api_models import HealthOut, HistoryEntryOut, JobsQuery, StatsOut
from app.entrypoints.api_operators import RabbitActions, operators
from app.entrypoints.api_sla import latency
from app.entrypoints.dashboard import install_dashboard
from app.entrypoints.shapes import flat_event, row_json
from app.ports import (
    ActionPublisher,
    Clock,
    Instant,
    JobFilter,
    JobQueries,
    JobRow,
    StoreUnavailable,
)
from app.services import queries as use_cases
from app.services.health import Health
from app.services.queries import (
    DEFAULT_STATS_MINUTES,
    MAX_STATS_MINUTES,
    Stats,
)
from app.settings import Settings

log = logging.getLogger("jobtrail.api")

MAX_BODY_BYTES = MAX_PAYLOAD_BYTES
PING_TIMEOUT_SECONDS = 5.0


class JobPageOut(BaseModel):
    """One page of ``GET /jobs``."""

    items: list[JobRow]
    next_cursor: str | None


# Dependencies are coroutines: FastAPI would run plain functions in a worker thread.
async def _context(request: Request) -> ApiContext:
    return cast(ApiContext, request.app.state.jobtrail)


Ctx = Annotated[ApiContext, Depends(_context)]
JobIdPath = Annotated[
    str, Path(pattern=JOB_ID_PATTERN, description="The job's id (1-200 of A-Z a-z 0-9 . _ : -).")
]
reads = APIRouter(
    dependencies=[Depends(require_reader)], responses=errors(*READ_ERRORS), route_class=EdgeRoute
)
probes = APIRouter(route_class=EdgeRoute)


@reads.get("/jobs/{job_id}", response_model=JobRow, responses=errors(404))
async def get_job(
    job_id: JobIdPath,
    ctx: Ctx,
    as_of: Annotated[
        Instant | None,
        Query(description="Fold only the events recorded up to this instant (ISO-8601)."),
    ] = None,
) -> JSONResponse:
    """The job's projection, or with ``as_of`` its state folded from the log up to that instant."""
    if as_of is None:
        row = await ctx.readers.store.get_job(job_id)
    else:
        row = await use_cases.job_as_of(ctx.readers.log, ctx.readers.policy, job_id, as_of)
    if row is None:
        when = "" if as_of is None else f" as of {as_of.isoformat()}"
        raise ApiError(404, f"job {job_id!r} not found{when}", {"job_id": job_id})
    return JSONResponse(row_json(row))


@reads.get("/jobs/{job_id}/history", response_model=list[HistoryEntryOut], responses=errors(404))
async def get_history(job_id: JobIdPath, ctx: Ctx) -> JSONResponse:
    """Every recorded event of the job in seq order, as ``jobtrail history --json`` prints it."""
    events = await ctx.readers.log.read_job(job_id)
    if not events:
        raise ApiError(404, f"job {job_id!r} has no recorded events", {"job_id": job_id})
    return JSONResponse([flat_event(e) for e in events])


@reads.get("/jobs", response_model=JobPageOut)
async def get_jobs(query: Annotated[JobsQuery, Query()], ctx: Ctx) -> JSONResponse:
    """Jobs matching every given filter, most recently changed first, one page at a time."""
    filters = JobFilter.model_validate(query.model_dump(exclude={"limit", "cursor"}))
    page = await use_cases.list_jobs(ctx.queries, filters, limit=query.limit, cursor=query.cursor)
    items = [row_json(row) for row in page.items]
    return JSONResponse({"items": items, "next_cursor": page.next_cursor})


@reads.get("/stats", response_model=StatsOut)
async def get_stats(
    ctx: Ctx,
    minutes: Annotated[
        int, Query(ge=1, le=MAX_STATS_MINUTES, description="Throughput window, in minutes.")
    ] = DEFAULT_STATS_MINUTES,
) -> JSONResponse:
    """Jobs by status and queue, attempts ended per minute, failure rate, and health."""
    stats = await use_cases.job_stats(ctx.queries, ctx.clock.now(), minutes)
    status, reason = await health_state(ctx)
    body = stats_json(stats) | {"health": {"status": status, "reason": reason}}
    return JSONResponse(body)


def stats_json(stats: Stats) -> dict[str, Any]:
    queues = [
        {"queue": queue, "total": sum(counts.values()), "by_status": counts}
        for queue, counts in sorted(stats.by_queue.items(), key=lambda item: item[0] or "")
    ]
    per_minute = [{"minute": m.minute.isoformat()} | m.counts for m in stats.per_minute]
    return {
        "jobs": {"total": stats.total, "by_status": stats.by_status, "by_queue": queues},
        "attempts": {
            "minutes": stats.minutes,
            "since": stats.since.isoformat(),
            "until": stats.until.isoformat(),
            "ended": stats.ended,
            "completed_per_minute": stats.completed_per_minute,
            "failure_rate": stats.failure_rate,
            "per_minute": per_minute,
        },
    }


async def health_state(ctx: ApiContext) -> tuple[str, str | None]:
    """("ok", None) or ("degraded", why): the tracker's own view, then a cheap SQL ping."""
    if ctx.health is not None and not ctx.health.ok:
        return "degraded", (ctx.health.degraded_reason or "")[:300]
    try:
        await asyncio.wait_for(ctx.queries.ping(), PING_TIMEOUT_SECONDS)
    except (StoreUnavailable, TimeoutError):
        return "degraded", "the projection store does not answer"
    return "ok", None


@probes.get(
    "/healthz",
    response_model=HealthOut,
    responses=errors(413, 422)
    | {503: {"model": HealthOut, "description": "Degraded, with the reason."}},
)
async def get_healthz(ctx: Ctx) -> JSONResponse:
    """200 ``{"status": "ok"}``, or 503 ``{"status": "degraded", "reason": ...}``."""
    status, reason = await health_state(ctx)
    if reason is None:
        return JSONResponse({"status": status})
    return JSONResponse({"status": status, "reason": reason}, 503)


@reads.get(
    "/metrics",
    response_class=Response,
    responses=answers("text/plain", "The Prometheus text exposition format."),
)
async def get_metrics(ctx: Ctx) -> Response:
    """Prometheus metrics, in the text exposition format."""
    return Response(ctx.metrics.render(), media_type=ctx.metrics.content_type)


class BodyLimit:
    """ASGI middleware: refuse (413) a request body over ``max_bytes``, declared or streamed."""

    def __init__(self, app: Any, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            info = {"limit_bytes": self.max_bytes}
            response = error_response(413, "request body too large", info)
            await response(scope, receive, send)
            return
        received = 0

        async def limited() -> Any:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise ApiError(413, "request body too large", {"limit_bytes": self.max_bytes})
            return message

        await self.app(scope, limited, send)


def create_api(
    settings: Settings,
    readers: Readers,
    *,
    health: Health | None = None,
    metrics: Metrics | None = None,
    tokens: Tokens | None = None,
    queries: JobQueries | None = None,
    clock: Clock | None = None,
    actions: ActionPublisher | None = None,
) -> FastAPI:
    """The API app. Without ``queries`` it opens its own on ``settings.sql_url`` (closed at
    shutdown); without ``tokens`` it reads them from the environment (ValueError if invalid)."""
    tokens = tokens if tokens is not None else load_tokens()
    owned = open_queries(settings) if queries is None else None
    reader = queries if queries is not None else cast(JobQueries, owned)
    context = ApiContext(readers, reader, health, metrics or Metrics(), clock or system_clock())

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        if owned is not None:
            await owned.close()

    api = FastAPI(
        title="Jobtrail",
        summary="Job states, histories and stats of the inference platform's queue.",
        version="1",
        lifespan=lifespan,
    )
    api.state.jobtrail = context
    api.state.jobtrail_fleet_page_events = settings.fleet_page_events
    install_tokens(api, tokens)
    api.state.jobtrail_actions = (
        actions if actions is not None else RabbitActions(settings.rabbit_url)
    )
    api.include_router(reads)
    api.include_router(probes)
    api.include_router(operators)
    install_dashboard(api, settings)
    api.include_router(audits)
    api.include_router(latency)
    install_error_handlers(api)
    api.add_middleware(BodyLimit)
    api.add_middleware(RequestTimer, metrics=context.metrics)
    return api

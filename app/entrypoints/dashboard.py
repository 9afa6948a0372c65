"""The operators' dashboard: ``GET /dashboard`` (the page), its data, and the AsyncAPI document.

The page itself is open (it holds no data); ``GET /dashboard/data`` is a read endpoint, behind
the read token when one is configured, like ``/stats`` which the page also polls. Queue health
comes from RabbitMQ's management API when it answers; when it does not, the panel says so and
everything else still renders.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, cast

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.bootstrap.management import ManagementUnavailable, RabbitManagement
from app.domain.state import JobStatus
from app.entrypoints.api_auth import require_reader
from app.entrypoints.api_edge import READ_ERRORS, EdgeRoute, answers, errors
from app.entrypoints.api_models import DashboardDataOut
from app.entrypoints.dashboard_jobs import job_pages
from app.entrypoints.dashboard_page import content_policy, page_html, page_script, page_style
from app.ports import JobFilter, JobQueries, JobRow
from app.services.queries import list_jobs
from app.services.sla import latency_overview, report_window
from app.settings import Settings

if TYPE_CHECKING:
    from app.entrypoints.api_context import ApiContext

log = logging.getLogger("jobtrail.dashboard")

DASHBOARD_STATE = "jobtrail_dashboard"
DEAD_LETTERS_SHOWN = 50
ANOMALY_WINDOW = 1000
"""How many of the most recently changed jobs the anomaly panel scans (two keyset pages)."""
ANOMALIES_SHOWN = 50
NOT_AVAILABLE = "RabbitMQ management API not available"
LATENCY_MINUTES = 15
"""The latency panel's window: attempts reserved or ended in the last quarter hour."""
_PAGE = 500
_DETAIL_CHARS = 300


class DashboardSettings(BaseSettings):
    """``JOBTRAIL_RABBIT_API_URL``: the management API (default: the AMQP host, port 15672)."""

    model_config = SettingsConfigDict(env_prefix="JOBTRAIL_", extra="ignore")

    rabbit_url: str = Settings.model_fields["rabbit_url"].default
    rabbit_api_url: str | None = None


@dataclass(frozen=True, slots=True)
class Dashboard:
    """What the dashboard routes need besides the API context."""

    management: RabbitManagement
    settings: Settings
    """The API's settings: the AsyncAPI document names their broker, vhost and policy."""


def install_dashboard(api: FastAPI, settings: Settings) -> None:
    """Serve the dashboard on ``api``, reading queues of ``settings.rabbit_url``'s vhost."""
    extra = DashboardSettings(rabbit_url=settings.rabbit_url)
    management = RabbitManagement.from_urls(settings.rabbit_url, extra.rabbit_api_url)
    setattr(api.state, DASHBOARD_STATE, Dashboard(management, settings))
    api.include_router(dashboard)
    api.include_router(job_pages)


def _dashboard(request: Request) -> Dashboard:
    found = getattr(request.app.state, DASHBOARD_STATE, None)
    if isinstance(found, Dashboard):
        return found
    # Included without install_dashboard: configure from the environment, once.
    env = DashboardSettings()
    made = Dashboard(RabbitManagement.from_urls(env.rabbit_url, env.rabbit_api_url), Settings())
    setattr(request.app.state, DASHBOARD_STATE, made)
    return made


# EdgeRoute refuses (422) query parameters on these as on every other endpoint.
dashboard = APIRouter(tags=["dashboard"], route_class=EdgeRoute)


@dashboard.get("/", include_in_schema=False)
async def get_root() -> RedirectResponse:
    """The API's front door leads to the dashboard."""
    return RedirectResponse("dashboard", status_code=307)


@dashboard.get(
    "/dashboard",
    response_class=HTMLResponse,
    responses=answers("text/html", "The page.", 413, 422),
)
async def get_dashboard() -> HTMLResponse:
    """The dashboard page (self-contained; it polls ``/stats`` and ``/dashboard/data``)."""
    headers = {
        "Content-Security-Policy": content_policy(page_script(), page_style()),
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "no-store",
        "Referrer-Policy": "no-referrer",
    }
    return HTMLResponse(page_html(), headers=headers)


@dashboard.get(
    "/dashboard/data",
    dependencies=[Depends(require_reader)],
    response_model=DashboardDataOut,
    responses=errors(*READ_ERRORS),
)
async def get_dashboard_data(request: Request) -> JSONResponse:
    """Dead letters with reasons, jobs with anomalies, and work-queue health."""
    context = cast("ApiContext", request.app.state.jobtrail)
    management = _dashboard(request).management
    dead, anomalies, queues, latency = await asyncio.gather(
        recent_dead_letters(context.queries),
        recent_anomalies(context.queries),
        queue_health(management),
        recent_latency(context),
    )
    body = {"dead_letters": dead, "anomalies": anomalies, "queues": queues, "latency": latency}
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


@dashboard.get(
    "/asyncapi.json",
    response_model=dict[str, Any],
    responses=errors(413, 422),
)
async def get_asyncapi(request: Request) -> JSONResponse:
    """The AsyncAPI 3.0 document of the event contract, for this API's broker, vhost and policy."""
    from app.entrypoints.asyncapi_cli import event_contract  # built on first use

    return JSONResponse(event_contract(_dashboard(request).settings))


def _when(row: JobRow) -> str | None:
    return row.updated_at.isoformat() if row.updated_at is not None else None


async def recent_dead_letters(queries: JobQueries) -> dict[str, Any]:
    """The newest dead-lettered jobs, with the reason and the last error of each."""
    filters = JobFilter(status=JobStatus.DEAD_LETTERED)
    page = await list_jobs(queries, filters, limit=DEAD_LETTERS_SHOWN)
    items = [
        {
            "job_id": row.job_id,
            "reason": row.terminal_reason,
            "error_code": row.last_error_code,
            "detail": (row.last_error_message or "")[:_DETAIL_CHARS],
            "pool": row.pool,
            "queue": row.queue,
            "attempt": row.attempt,
            "updated_at": _when(row),
        }
        for row in page.items
    ]
    return {"items": items, "more": page.next_cursor is not None}


async def recent_anomalies(queries: JobQueries) -> dict[str, Any]:
    """Jobs with anomalies among the ``ANOMALY_WINDOW`` most recently changed ones."""
    found: list[JobRow] = []
    scanned = 0
    cursor: str | None = None
    while scanned < ANOMALY_WINDOW:
        page = await list_jobs(queries, JobFilter(), limit=_PAGE, cursor=cursor)
        scanned += len(page.items)
        found.extend(row for row in page.items if row.anomalies > 0)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    items = [
        {
            "job_id": row.job_id,
            "status": row.status,
            "anomalies": row.anomalies,
            "attempt": row.attempt,
            "pool": row.pool,
            "updated_at": _when(row),
        }
        for row in found[:ANOMALIES_SHOWN]
    ]
    return {"items": items, "found": len(found), "scanned": scanned}


async def recent_latency(context: ApiContext) -> dict[str, Any]:
    """Waits, runs and end-to-end times by pool and priority, and starved tenants, over the
    last ``LATENCY_MINUTES`` (from the projection: one indexed read per poll)."""
    now = context.clock.now()
    window = report_window(now - timedelta(minutes=LATENCY_MINUTES), now, now)
    latency, fairness = await latency_overview(context.queries, context.readers.policy, window)
    starved = fairness.as_dict()["starved"]
    return latency.as_dict() | {"minutes": LATENCY_MINUTES, "starved": starved}


async def queue_health(management: RabbitManagement) -> dict[str, Any]:
    """Depth and consumers per work queue, or why they are not available."""
    try:
        page = await management.work_queues()
    except ManagementUnavailable as exc:
        log.debug("queue health unavailable", extra={"reason": str(exc)})
        return {"available": False, "message": NOT_AVAILABLE, "reason": str(exc), "items": []}
    items = [
        {
            "name": q.name,
            "messages": q.messages,
            "ready": q.ready,
            "unacked": q.unacked,
            "consumers": q.consumers,
            "state": q.state,
        }
        for q in page.queues
    ]
    return {"available": True, "message": None, "items": items, "total": page.total}

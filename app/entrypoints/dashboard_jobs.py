"""The dashboard's job pages: ``GET /dashboard/jobs`` (search) and ``GET /dashboard/jobs/{id}``.

Server-rendered (Jinja2, autoescaped: job fields are producers' text). Reads follow the summary
page's model: when a read token is configured, a request without a valid one gets the page
without its data (HTTP 401) and the page's script asks for the token, keeps it for the tab and
loads the same URL again with it. Every problem is a page with a 4xx and one line saying what
was wrong, never a traceback; a store outage is the API's usual 503.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from app.domain.events import JOB_ID_PATTERN, DeadLetterReason, JobType, Priority
from app.domain.state import TERMINAL, JobStatus
from app.entrypoints.api_auth import bearer, require_reader
from app.entrypoints.api_edge import MAX_ECHO
from app.entrypoints.api_models import JobsQuery
from app.entrypoints.dashboard_page import (
    content_policy,
    job_page_html,
    job_pages_script,
    job_pages_style,
)
from app.entrypoints.dashboard_views import load_job
from app.ports import InvalidQuery, JobFilter
from app.services.queries import JobPage, list_jobs

if TYPE_CHECKING:
    from app.entrypoints.api_context import ApiContext

MAX_SHOWN_ID = 200
"""A refused job id is echoed at most this long (escaped)."""
_JOB_ROOT = "../../"
_SEARCH_ROOT = "../"

job_pages = APIRouter(tags=["dashboard"])


def _respond(template: str, status: int = 200, **context: Any) -> HTMLResponse:
    headers = {
        "Content-Security-Policy": content_policy(
            job_pages_script(), job_pages_style(), form_action="'self'"
        ),
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "no-store",
        "Referrer-Policy": "no-referrer",
    }
    context.setdefault("locked", False)
    return HTMLResponse(job_page_html(template, **context), status, headers=headers)


async def _locked(request: Request, title: str, root: str) -> HTMLResponse | None:
    """The page without data (401) when reads need a token and none valid came; else None."""
    try:
        await require_reader(request, await bearer(request))
    except HTTPException:
        return _respond("page.html", 401, title=title, root=root, locked=True)
    return None


def _problem(status: int, title: str, problem: str, root: str) -> HTMLResponse:
    return _respond("problem.html", status, title=title, problem=problem, root=root)


@job_pages.get("/dashboard/jobs/{job_id}", include_in_schema=False)
async def get_job_page(request: Request, job_id: str) -> HTMLResponse:
    """One job: header, attempts, timeline with reasons, anomalies and the chain's check."""
    title = f"Job {job_id[:MAX_SHOWN_ID]}"
    locked = await _locked(request, title, _JOB_ROOT)
    if locked is not None:
        return locked
    if request.query_params:  # as the API's routes: an unknown parameter is refused, not ignored
        unknown = sorted(request.query_params)[0][:MAX_ECHO]
        return _problem(422, "Unknown parameter", f"unknown query parameter {unknown!r}", _JOB_ROOT)
    if not re.fullmatch(JOB_ID_PATTERN, job_id):
        shown = job_id[:MAX_SHOWN_ID]
        why = f"{shown!r} is not a job id (1-200 of A-Z a-z 0-9 . _ : -)"
        return _problem(422, "Not a job id", why, _JOB_ROOT)
    context = cast("ApiContext", request.app.state.jobtrail)
    view = await load_job(context.readers, job_id)
    if view is None:
        return _problem(404, "No such job", f"no job {job_id!r} is known", _JOB_ROOT)
    status = view.row.status
    terminal = status is not None and JobStatus(status) in TERMINAL
    return _respond(
        "job.html", title=title, root=_JOB_ROOT, view=view, job_status=status, terminal=terminal
    )


@job_pages.get("/dashboard/jobs", include_in_schema=False)
async def get_jobs_page(request: Request) -> HTMLResponse:
    """Jobs matching the API's filters, most recently changed first, with cursor paging."""
    locked = await _locked(request, "Jobs", _SEARCH_ROOT)
    if locked is not None:
        return locked
    given = {k: v.strip() for k, v in request.query_params.items() if v.strip()}
    try:
        query = JobsQuery.model_validate(given)
        filters = JobFilter.model_validate(query.model_dump(exclude={"limit", "cursor"}))
        context = cast("ApiContext", request.app.state.jobtrail)
        page = await list_jobs(context.queries, filters, limit=query.limit, cursor=query.cursor)
    except ValidationError as exc:
        return _search(given, None, _first_problem(exc), 422)
    except InvalidQuery as exc:
        return _search(given, None, str(exc), 422)
    return _search(given, page)


def _search(
    given: dict[str, str], page: JobPage | None, problem: str | None = None, status: int = 200
) -> HTMLResponse:
    kept = {k: v for k, v in given.items() if k != "cursor"}
    more = None if page is None or page.next_cursor is None else kept | {"cursor": page.next_cursor}
    return _respond(
        "jobs.html",
        status,
        title="Jobs",
        root=_SEARCH_ROOT,
        given=kept,
        page=page,
        problem=problem,
        first=f"?{urlencode(kept)}" if "cursor" in given else None,
        next=None if more is None else f"?{urlencode(more)}",
        statuses=[s.value for s in JobStatus],
        job_types=[t.value for t in JobType],
        priorities=[p.value for p in Priority],
        reasons=[r.value for r in DeadLetterReason],
    )


def _first_problem(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"]) or "filters"
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "not a filter of this page"
    return f"invalid {where[:60]}: {message[:300]}"

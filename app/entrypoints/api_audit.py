"""Auditors' endpoints: the fleet as of an instant, and verification of one job's chain."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated, cast

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse

from app.domain.chain import verify_chain
from app.domain.events import JOB_ID_PATTERN
from app.domain.state import JobStatus
from app.entrypoints.api_auth import require_reader
from app.entrypoints.api_edge import READ_ERRORS, ApiError, EdgeRoute, errors
from app.entrypoints.api_models import FleetOut, VerifyOut
from app.ports import Instant
from app.services.fleet import FleetKey, decode_fleet_cursor, encode_fleet_cursor, fleet_page
from app.services.queries import MAX_CURSOR_LENGTH

if TYPE_CHECKING:
    from app.entrypoints.api_context import ApiContext

audits = APIRouter(
    dependencies=[Depends(require_reader)],
    tags=["auditors"],
    responses=errors(*READ_ERRORS),
    route_class=EdgeRoute,
)


def _context(request: Request) -> ApiContext:
    return cast("ApiContext", request.app.state.jobtrail)


def _fleet_turn(request: Request) -> asyncio.Semaphore:
    """One fleet page at a time per process: concurrent auditors wait their turn rather than
    each taking another share of the event loop from the tracker's ingestion."""
    state = request.app.state
    gate = getattr(state, "jobtrail_fleet_gate", None)
    if gate is None:
        gate = state.jobtrail_fleet_gate = asyncio.Semaphore(1)
    return cast(asyncio.Semaphore, gate)


@audits.get(
    "/fleet",
    summary="Jobs by state (and pool, tenant or model) as of an instant",
    response_model=FleetOut,
    response_model_exclude_unset=True,
)
async def fleet(
    request: Request,
    at: Annotated[Instant, Query(description="The instant (ISO-8601 with an offset).")],
    status: Annotated[JobStatus | None, Query(description="Only jobs in this state.")] = None,
    by: Annotated[FleetKey | None, Query(description="Group by pool, tenant or model.")] = None,
    ids: Annotated[bool, Query(description="List the job ids of each group.")] = False,
    cursor: Annotated[
        str | None,
        Query(
            max_length=MAX_CURSOR_LENGTH,
            description="The previous page's next_cursor (same at, status, by and ids).",
        ),
    ] = None,
) -> JSONResponse:
    """One page of the fleet: the jobs after ``cursor``, up to JOBTRAIL_FLEET_PAGE_EVENTS entries.

    Pages partition the jobs: add up every page's counts (until ``next_cursor`` is null) for the
    whole fleet. The bound keeps one auditor's request from holding the tracker's event loop.
    """
    context = _context(request)
    after = None if cursor is None else decode_fleet_cursor(cursor, at, status, by, ids)
    async with _fleet_turn(request):
        page = await fleet_page(
            context.readers.log,
            context.readers.policy,
            at,
            status=status,
            by=by,
            with_ids=ids,
            after=after,
            max_events=request.app.state.jobtrail_fleet_page_events,
        )
    last = page.last_job
    body = {
        "at": at.isoformat(),
        "status": status,
        "by": by,
        "groups": [
            {"key": g.key, "status": g.status, "count": g.count}
            | ({"job_ids": list(g.job_ids)} if ids else {})
            for g in page.groups
        ],
        "complete": last is None,
        "next_cursor": None if last is None else encode_fleet_cursor(last, at, status, by, ids),
        "scanned": {"jobs": page.jobs, "events": page.events},
    }
    return JSONResponse(body)  # plain json.dumps: FastAPI's encoder costs ~10 µs per job id


@audits.get(
    "/jobs/{job_id}/verify",
    summary="Re-compute one job's hash chain",
    response_model=VerifyOut,
    response_model_exclude_unset=True,
    responses=errors(404),
)
async def verify_job(
    request: Request, job_id: Annotated[str, Path(pattern=JOB_ID_PATTERN, max_length=200)]
) -> dict[str, object]:
    entries = await _context(request).readers.log.read_job_raw(job_id)
    if not entries:
        raise ApiError(404, f"no events for job {job_id!r}", {"job_id": job_id})
    broken = verify_chain(job_id, entries)
    if broken is None:
        return {"job_id": job_id, "intact": True, "entries": len(entries)}
    return {"job_id": job_id, "intact": False, "seq": broken.seq, "reason": broken.reason}

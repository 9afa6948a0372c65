"""Auditors' endpoints: the fleet as of an instant, and verification of one job's chain."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, cast

from fastapi import APIRouter, Depends, Path, Query, Request

from app.domain.chain import verify_chain
from app.domain.events import JOB_ID_PATTERN
from app.domain.state import JobStatus
from app.entrypoints.api_auth import require_reader
from app.entrypoints.api_edge import READ_ERRORS, ApiError, EdgeRoute, errors
from app.entrypoints.api_models import FleetOut, VerifyOut
from app.services.audit import FleetKey, fleet_as_of
from app.services.queries import Instant

if TYPE_CHECKING:
    from app.entrypoints.api import ApiContext

audits = APIRouter(
    dependencies=[Depends(require_reader)],
    tags=["auditors"],
    responses=errors(*READ_ERRORS),
    route_class=EdgeRoute,
)


def _context(request: Request) -> ApiContext:
    return cast("ApiContext", request.app.state.jobtrail)


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
) -> dict[str, object]:
    context = _context(request)
    readers = context.readers
    groups = await fleet_as_of(readers.log, readers.policy, at, status=status, by=by, with_ids=ids)
    return {
        "at": at.isoformat(),
        "by": by,
        "groups": [
            {"key": g.key, "status": g.status, "count": g.count}
            | ({"job_ids": list(g.job_ids)} if ids else {})
            for g in groups
        ],
    }


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

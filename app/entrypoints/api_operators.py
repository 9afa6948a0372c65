"""Operator endpoints: redrive dead letters and cancel jobs (operator token required)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, cast

from fastapi import APIRouter, Depends, HTTPException, Path, Request
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from app.client import JobtrailClient
from app.domain.events import JOB_ID_PATTERN, DeadLetterReason, JobEvent
from app.entrypoints.api_auth import require_operator
from app.services.operations import (
    ActionPublisher,
    InvalidAction,
    RedriveSelection,
    cancel_event,
    dead_letters,
    publish_all,
    redrive_event,
)

if TYPE_CHECKING:
    from app.entrypoints.api import ApiContext

operators = APIRouter(dependencies=[Depends(require_operator)], tags=["operators"])

Actor = Annotated[str, Field(min_length=1, max_length=200, description="Who acts; recorded.")]


class CancelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    actor: Actor
    reason: str = Field(default="", max_length=4000)


class RedriveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    actor: Actor
    reason: DeadLetterReason | None = None
    pool: str | None = Field(default=None, min_length=1, max_length=200)
    since: AwareDatetime | None = None
    limit: int = Field(default=1000, ge=1, le=100_000)
    dry_run: bool = False


class RabbitActions:
    """Publishes operator events to ``jobtrail.events`` over its own connection."""

    def __init__(self, rabbit_url: str) -> None:
        self._url = rabbit_url

    async def publish(self, event: JobEvent) -> None:
        async with JobtrailClient(self._url, source="operator") as client:
            await client.publish(event)


def _context(request: Request) -> tuple[ApiContext, ActionPublisher]:
    context = cast("ApiContext", request.app.state.jobtrail)
    actions = cast(ActionPublisher, request.app.state.jobtrail_actions)
    return context, actions


@operators.post("/jobs/{job_id}/cancel", summary="Cancel a live job (a cancelled event)")
async def cancel_job(
    request: Request,
    body: CancelRequest,
    job_id: Annotated[str, Path(pattern=JOB_ID_PATTERN, max_length=200)],
) -> dict[str, object]:
    context, actions = _context(request)
    row = await context.readers.store.get_job(job_id)
    if row is None:
        raise HTTPException(404, f"no job {job_id!r}")
    try:
        event = cancel_event(row, body.actor, context.clock.now(), body.reason)
    except InvalidAction as exc:
        raise HTTPException(409, str(exc)) from exc
    await actions.publish(event)
    return {
        "job_id": job_id,
        "event_id": str(event.event_id),
        "attempt": event.attempt,
        "actor": body.actor,
    }


@operators.post("/redrive", summary="Send matching dead letters back to their queues")
async def redrive_jobs(request: Request, body: RedriveRequest) -> dict[str, object]:
    context, actions = _context(request)
    selection = RedriveSelection(body.reason, body.pool, body.since, body.limit)
    rows = await dead_letters(context.queries, selection)
    if body.dry_run:
        return {"dry_run": True, "job_ids": [r.job_id for r in rows]}
    now = context.clock.now()
    events = [redrive_event(row, body.actor, now) for row in rows]
    await publish_all(actions, events)
    return {"dry_run": False, "job_ids": [e.job_id for e in events], "actor": body.actor}

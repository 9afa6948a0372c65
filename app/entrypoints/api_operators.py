"""Operator endpoints: redrive dead letters (one, or by filter) and cancel jobs (operator token
required)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, cast

import aiormq
from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel, ConfigDict, Field

from app.client import JobtrailClient
from app.domain.events import JOB_ID_PATTERN, DeadLetterReason, JobEvent, Name, PoolName, Text
from app.entrypoints.api_auth import require_operator
from app.entrypoints.api_edge import OPERATOR_ERRORS, ApiError, EdgeRoute, errors
from app.entrypoints.api_models import CancelOut, RedriveOut
from app.ports import ActionPublisher, Instant, JobRow, PublishFailed
from app.services.operations import (
    InvalidAction,
    RedriveSelection,
    cancel_event,
    dead_letters,
    publish_all,
    redrive_event,
)

if TYPE_CHECKING:
    from app.entrypoints.api_context import ApiContext

operators = APIRouter(
    dependencies=[Depends(require_operator)],
    tags=["operators"],
    responses=errors(*OPERATOR_ERRORS),
    route_class=EdgeRoute,
)
CONNECT_TIMEOUT_SECONDS = 10.0

# The request fields have the types of the event fields they become (app.domain.events), so a
# request the model accepts always makes a valid event: no 500 on a value the event refuses.
Actor = Annotated[Name, Field(description="Who acts (1-200 characters, no NUL); recorded.")]


class CancelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    actor: Actor
    reason: Text = Field(default="", description="Why (at most 4000 characters, no NUL).")


class RedriveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    actor: Actor
    reason: DeadLetterReason | None = None
    pool: PoolName | None = None
    since: Instant | None = Field(default=None, description="Dead-lettered at or after (ISO-8601).")
    limit: int = Field(default=1000, ge=1, le=100_000)
    dry_run: bool = False


class RabbitActions:
    """Publishes operator events to ``jobtrail.events`` over its own connection."""

    def __init__(self, rabbit_url: str) -> None:
        self._url = rabbit_url

    async def publish(self, event: JobEvent) -> None:
        """Publish ``event``; ``PublishFailed`` when the broker cannot be reached or refuses it."""
        try:
            async with (
                asyncio.timeout(CONNECT_TIMEOUT_SECONDS),
                JobtrailClient(self._url, source="operator") as client,
            ):
                await client.publish(event)
        except (aiormq.exceptions.AMQPError, OSError, TimeoutError) as exc:
            raise PublishFailed(f"the broker is unavailable: {exc!r}") from exc


def _context(request: Request) -> tuple[ApiContext, ActionPublisher]:
    context = cast("ApiContext", request.app.state.jobtrail)
    actions = cast(ActionPublisher, request.app.state.jobtrail_actions)
    return context, actions


async def _act_on(
    request: Request,
    job_id: str,
    actor: str,
    reason: str,
    make: Callable[[JobRow, str, datetime, str], JobEvent],
) -> dict[str, object]:
    """Publish the action ``make`` derives from the job's row: 404 unknown, 409 not applicable."""
    context, actions = _context(request)
    row = await context.readers.store.get_job(job_id)
    if row is None:
        raise ApiError(404, f"no job {job_id!r}")
    try:
        event = make(row, actor, context.clock.now(), reason)
    except InvalidAction as exc:
        raise ApiError(409, str(exc)) from exc
    await actions.publish(event)
    return {
        "job_id": job_id,
        "event_id": str(event.event_id),
        "attempt": event.attempt,
        "actor": actor,
    }


@operators.post(
    "/jobs/{job_id}/cancel",
    summary="Cancel a live job (a cancelled event)",
    response_model=CancelOut,
    responses=errors(404, 409),
)
async def cancel_job(
    request: Request,
    body: CancelRequest,
    job_id: Annotated[str, Path(pattern=JOB_ID_PATTERN, max_length=200)],
) -> dict[str, object]:
    return await _act_on(request, job_id, body.actor, body.reason, cancel_event)


class RedriveJobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    actor: Actor
    reason: Text = Field(default="", description="Why (at most 4000 characters, no NUL).")


@operators.post(
    "/jobs/{job_id}/redrive",
    summary="Send one dead-lettered job back to its queue (a redriven event)",
    response_model=CancelOut,
    responses=errors(404, 409),
)
async def redrive_job(
    request: Request,
    body: RedriveJobRequest,
    job_id: Annotated[str, Path(pattern=JOB_ID_PATTERN, max_length=200)],
) -> dict[str, object]:
    """The dashboard's job page redrives the job it shows, whatever else is dead-lettered."""
    return await _act_on(request, job_id, body.actor, body.reason, redrive_event)


@operators.post(
    "/redrive",
    summary="Send matching dead letters back to their queues",
    response_model=RedriveOut,
    response_model_exclude_unset=True,
)
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

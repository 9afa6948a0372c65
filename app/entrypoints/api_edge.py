"""The API's edge: one error shape, one order of checks, and the errors each operation declares.

Every 4xx and 5xx the API answers is ``{"error": <one line>, "detail": <anything or null>}``
(``ErrorOut``); the exception handlers here map each failure to it. Every operation is an
``EdgeRoute``, which checks a request in one fixed order before FastAPI reads anything else:

1. authentication (the route's ``require_reader`` / ``require_operator``): a request without a
   valid token gets 401/403 whatever its query or body;
2. unknown query parameters: 422, named, for every operation alike (the allowed names are the
   ones the operation declares, so they cannot drift from the OpenAPI document);
3. FastAPI's validation of the path, query and body: 422.

``errors(...)`` builds an operation's ``responses`` so the OpenAPI document lists exactly the
error answers it gives, each with ``ErrorOut``, and never FastAPI's own 422 body.
"""

from __future__ import annotations

import http
import logging
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from app.entrypoints.api_auth import bearer, require_operator, require_reader
from app.ports import InvalidQuery, PublishFailed, StoreUnavailable

log = logging.getLogger("jobtrail.api")

MAX_ECHO = 60
"""At most this many characters of a caller's name (a parameter, a body field) are echoed."""
_ROUTING_MESSAGES = {404: "no such endpoint", 405: "method not allowed on this endpoint"}
_GUARDS = (require_reader, require_operator)


class ErrorOut(BaseModel):
    """Every error the API answers."""

    error: str = Field(description="What went wrong, in one line.")
    detail: Any = Field(default=None, description="Structured detail, when there is some.")


class ApiError(HTTPException):
    """An HTTP error with a structured ``detail`` next to its message."""

    def __init__(
        self, status: int, message: str, info: Any = None, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(status, message, headers=dict(headers) if headers else None)
        self.info = info


def error_response(
    status: int, message: str, detail: Any = None, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": message, "detail": detail}, status, headers=headers)


_WHEN = {
    400: "The body is not JSON text (not UTF-8, or nested too deep).",
    401: "No bearer token, or not a valid one (reads need one only when a read token is set).",
    403: "The token may not do this, or operator actions are disabled.",
    404: "No such job (or nothing recorded for it at that instant).",
    409: "The action does not apply to the job in its current state.",
    413: "The request body is over 64 KiB.",
    422: "A bad parameter or body value, or a query parameter the operation does not have.",
    503: "A store or the broker does not answer (Retry-After: 5); retry later.",
}
READ_ERRORS = (401, 413, 422, 503)
"""What every read operation may answer besides its own codes."""
OPERATOR_ERRORS = (400, 401, 403, 413, 422, 503)
"""What every operator action may answer besides its own codes."""


Responses = dict[int | str, dict[str, Any]]


def errors(*codes: int) -> Responses:
    """``responses=`` declaring these error answers, each with the service's error shape."""
    return {code: {"model": ErrorOut, "description": _WHEN[code]} for code in sorted(set(codes))}


def answers(media_type: str, description: str, *codes: int) -> Responses:
    """``responses=`` of an operation whose 200 is not JSON (its errors still are: FastAPI would
    give a ``model`` the operation's own media type, so they name the schema directly)."""
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}}
    declared: Responses = {
        code: {"description": _WHEN[code], "content": error} for code in sorted(set(codes))
    }
    return declared | {
        200: {"description": description, "content": {media_type: {"schema": {"type": "string"}}}}
    }


def declared_query_names(dependant: Dependant) -> frozenset[str]:
    """Every query parameter name the operation (and its dependencies) declares."""
    names: set[str] = set()
    pending = [dependant]
    while pending:
        current = pending.pop()
        for field in current.query_params:
            model = field.field_info.annotation
            if isinstance(model, type) and issubclass(model, BaseModel):
                names.update(f.alias or name for name, f in model.model_fields.items())
            else:
                names.add(field.alias)
        pending.extend(current.dependencies)
    return frozenset(names)


def _guards(dependant: Dependant) -> list[Callable[..., Any]]:
    found: list[Callable[..., Any]] = []
    pending = [dependant]
    while pending:
        current = pending.pop()
        if current.call in _GUARDS and current.call not in found:
            found.append(current.call)
        pending.extend(current.dependencies)
    return found


def refuse_unknown(request: Request, allowed: frozenset[str]) -> None:
    """Raise 422 naming the first query parameter the operation does not have."""
    unknown = sorted({name[:MAX_ECHO] for name in request.query_params} - allowed)
    if unknown:
        info = {"unknown": unknown[:10], "allowed": sorted(allowed)}
        raise ApiError(422, f"unknown query parameter {unknown[0]!r}", info)


class EdgeRoute(APIRoute):
    """A route that authenticates, then refuses unknown query parameters, then validates."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        guards = _guards(self.dependant)
        allowed = declared_query_names(self.dependant)

        async def checked(request: Request) -> Response:
            for guard in guards:  # they run again as dependencies; both runs agree
                await guard(request, await bearer(request))
            refuse_unknown(request, allowed)
            return await handler(request)

        return checked


async def _on_http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    detail = exc.info if isinstance(exc, ApiError) else None
    message = exc.detail if isinstance(exc.detail, str) else "request refused"
    if message == http.HTTPStatus(exc.status_code).phrase:  # routing's own wording: say more
        message = _ROUTING_MESSAGES.get(exc.status_code, message)
    return error_response(exc.status_code, message, detail, exc.headers)


async def _on_validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = [
        {
            "loc": ".".join(str(part)[:MAX_ECHO] for part in error["loc"]),
            "msg": str(error["msg"]).removeprefix("Value error, ")[:300],
            "type": error["type"],
        }
        for error in exc.errors()
    ]
    first = problems[0] if problems else {"loc": "request", "msg": "invalid"}
    return error_response(422, f"invalid {first['loc']}: {first['msg']}", problems)


async def _on_invalid_query(_: Request, exc: Exception) -> JSONResponse:
    return error_response(422, str(exc))


async def _on_store_unavailable(request: Request, exc: Exception) -> JSONResponse:
    log.warning("store unavailable", extra={"path": request.url.path, "error": str(exc)})
    message = "storage is unavailable; try again later"
    return error_response(503, message, None, {"Retry-After": "5"})


async def _on_publish_failed(request: Request, exc: Exception) -> JSONResponse:
    log.warning("broker unavailable", extra={"path": request.url.path, "error": str(exc)})
    message = "the broker did not take the action; try again later"
    return error_response(503, message, None, {"Retry-After": "5"})


async def _on_crash(request: Request, exc: Exception) -> JSONResponse:
    log.error("request failed", exc_info=exc, extra={"path": request.url.path})
    return error_response(500, "internal error")


def install_error_handlers(api: FastAPI) -> None:
    """Map every failure to the one error shape."""
    api.add_exception_handler(HTTPException, _on_http_error)
    api.add_exception_handler(RequestValidationError, _on_validation_error)
    api.add_exception_handler(InvalidQuery, _on_invalid_query)
    api.add_exception_handler(StoreUnavailable, _on_store_unavailable)
    api.add_exception_handler(PublishFailed, _on_publish_failed)
    api.add_exception_handler(Exception, _on_crash)

"""The API's edges, one regression test per defect issue 11 found: no input gives a 5xx, every
refusal is the service's error shape, every endpoint checks a request in the same order, and the
OpenAPI document declares what the service answers (test_api_boundaries.py adds Hypothesis values).

The stores are test_api.py's seeded ones (SQLite, and MongoDB-speaking log + PostgreSQL); operator
actions go to a recording publisher, except where the real RabbitMQ client is the point.
"""

from __future__ import annotations

import base64
import gc
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from app.domain.events import JobEvent
from app.entrypoints.api_auth import Tokens
from app.entrypoints.api_operators import RabbitActions
from tests.e2e.test_api import OPERATE, READ, Backend, backend, client_of, store_urls

assert backend and store_urls  # test_api.py's seeded stores (imported as fixtures)

AUDIT = "audit-token-0123456789"


class Recorder:
    """An ActionPublisher that keeps what it was given."""

    def __init__(self) -> None:
        self.events: list[JobEvent] = []

    async def publish(self, event: JobEvent) -> None:
        self.events.append(event)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def api(backend: Backend, recorder: Recorder) -> AsyncIterator[httpx.AsyncClient]:
    """The app with read, auditor and operator tokens; the client sends the operator's."""
    tokens = Tokens.of(read=READ, auditor=AUDIT, operator=OPERATE)
    async with client_of(backend.app(tokens=tokens, actions=recorder), OPERATE) as client:
        yield client


def assert_error_shape(response: httpx.Response, status: int | None = None) -> dict[str, Any]:
    """A 4xx in the service's error shape (never a 5xx, never FastAPI's own body)."""
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    if status is not None:
        assert response.status_code == status, response.text[:300]
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error", "detail"} and isinstance(body["error"], str), body
    assert body["error"] and "\n" not in body["error"]
    return dict(body)


def cursor_of(instant: str, job_id: str = "job-done") -> str:
    text = json.dumps([instant, job_id])
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


NO_UTC_FORM = [
    "0001-01-01T00:00:00+05:00",
    "0001-01-01T03:00:00+14:00",
    "9999-12-31T23:59:59-05:00",
]


# -- regressions: each 500 the issue found ----------------------------------------------------


@pytest.mark.parametrize("instant", NO_UTC_FORM)
async def test_a_forged_cursor_without_a_utc_form_is_422(
    api: httpx.AsyncClient, instant: str
) -> None:
    response = await api.get("/jobs", params={"cursor": cursor_of(instant)})
    body = assert_error_shape(response, 422)
    assert body["error"] == "cursor is not one this API handed out"


@pytest.mark.parametrize(
    "body",
    [
        {"actor": "ann", "since": "0001-01-01T00:00:00+05:00"},
        {"actor": "ann", "since": "9999-12-31T23:59:59-05:00"},
        {"actor": "ann", "pool": "gpu\x00b"},
        {"actor": "ann\x00"},
        {"actor": "ann", "since": "0"},
    ],
)
async def test_redrive_refuses_what_its_events_and_filters_refuse(
    api: httpx.AsyncClient, recorder: Recorder, body: dict[str, Any]
) -> None:
    response = await api.post("/redrive", json=body)
    problem = assert_error_shape(response, 422)
    assert problem["error"].startswith("invalid body.")
    assert recorder.events == []


@pytest.mark.parametrize("body", [{"actor": "ann\x00"}, {"actor": "ann", "reason": "why\x00"}])
async def test_cancel_refuses_what_the_cancelled_event_refuses(
    api: httpx.AsyncClient, recorder: Recorder, body: dict[str, Any]
) -> None:
    response = await api.post("/jobs/job-waiting/cancel", json=body)
    assert_error_shape(response, 422)
    assert recorder.events == []


async def test_a_valid_cancel_and_redrive_still_publish(
    api: httpx.AsyncClient, recorder: Recorder
) -> None:
    cancel = await api.post("/jobs/job-waiting/cancel", json={"actor": "ann", "reason": "r"})
    assert cancel.status_code == 200, cancel.text
    redrive = await api.post("/redrive", json={"actor": "ann", "since": "2026-11-27T14:00:00Z"})
    assert redrive.json() == {"dry_run": False, "job_ids": ["job-dead"], "actor": "ann"}
    assert [(e.type, e.job_id, e.actor) for e in recorder.events] == [
        ("cancelled", "job-waiting", "ann"),
        ("redriven", "job-dead", "ann"),
    ]


async def test_an_unreachable_broker_is_503_not_500(backend: Backend) -> None:
    actions = RabbitActions("amqp://guest:guest@127.0.0.1:1/")
    app = backend.app(tokens=Tokens.of(operator=OPERATE), actions=actions)
    async with client_of(app, OPERATE) as client:
        response = await client.post("/jobs/job-waiting/cancel", json={"actor": "ann"})
    gc.collect()
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "5"
    assert set(response.json()) == {"error", "detail"}


# -- regressions: one behaviour for every endpoint --------------------------------------------


async def test_a_handlers_404_keeps_its_message(api: httpx.AsyncClient) -> None:
    response = await api.get("/jobs/never-seen/verify")
    assert response.status_code == 404
    assert response.json() == {
        "error": "no events for job 'never-seen'",
        "detail": {"job_id": "never-seen"},
    }
    cancel = await api.post("/jobs/never-seen/cancel", json={"actor": "ann"})
    assert cancel.json()["error"] == "no job 'never-seen'"
    assert (await api.get("/nowhere")).json() == {"error": "no such endpoint", "detail": None}


ENDPOINTS = [
    ("GET", "/jobs", None),
    ("GET", "/jobs/job-done", None),
    ("GET", "/jobs/job-done/history", None),
    ("GET", "/jobs/job-done/verify", None),
    ("GET", "/fleet?at=2026-11-27T14:00:30Z", None),
    ("GET", "/stats", None),
    ("GET", "/healthz", None),
    ("GET", "/metrics", None),
    ("GET", "/dashboard", None),
    ("GET", "/dashboard/data", None),
    ("GET", "/asyncapi.json", None),
    ("POST", "/jobs/job-waiting/cancel", {"actor": "ann"}),
    ("POST", "/redrive", {"actor": "ann", "dry_run": True}),
]


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
async def test_every_endpoint_refuses_unknown_parameters_alike(
    api: httpx.AsyncClient, recorder: Recorder, method: str, path: str, body: Any
) -> None:
    joiner = "&" if "?" in path else "?"
    response = await api.request(method, f"{path}{joiner}owner=me", json=body)
    problem = assert_error_shape(response, 422)
    assert problem["error"] == "unknown query parameter 'owner'"
    assert problem["detail"]["unknown"] == ["owner"]
    assert "owner" not in problem["detail"]["allowed"]
    assert recorder.events == []


@pytest.mark.parametrize(
    "value", ["0", "1e9", "yesterday", "2026-01-01T00:00:00", "2026-13-01T00:00:00Z", *NO_UTC_FORM]
)
async def test_fleet_refuses_the_instants_jobs_refuses(api: httpx.AsyncClient, value: str) -> None:
    for path, name in [("/fleet", "at"), ("/jobs", "updated_since"), ("/jobs/job-done", "as_of")]:
        response = await api.get(path, params={name: value})
        problem = assert_error_shape(response, 422)
        assert problem["error"].startswith(f"invalid query.{name}"), problem


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/redrive", "{not json"),
        ("/redrive", json.dumps({"bogus": 1})),
        ("/redrive", json.dumps({"actor": "\x00", "since": "x" * 60_000})),
        ("/jobs/job-waiting/cancel", "{not json"),
        ("/jobs/bad$id/cancel", json.dumps({"actor": "ann"})),
        ("/jobs/bad$id/redrive", json.dumps({"actor": "ann", "extra": 1})),
        ("/jobs/job-waiting/cancel?owner=me", json.dumps({"actor": 1})),
    ],
)
async def test_authentication_comes_before_validation(
    backend: Backend, recorder: Recorder, path: str, body: str
) -> None:
    app = backend.app(tokens=Tokens.of(read=READ, operator=OPERATE), actions=recorder)
    headers = {"content-type": "application/json"}
    for token, status in [(None, 401), ("not-a-valid-token-000", 401), (READ, 403)]:
        async with client_of(app, token) as client:
            response = await client.post(path, content=body, headers=headers)
        assert_error_shape(response, status)
    for path_read in ["/jobs/bad$id", "/jobs?status=lost&owner=me", "/fleet?at=yesterday"]:
        async with client_of(app) as anonymous:
            assert_error_shape(await anonymous.get(path_read), 401)
    assert recorder.events == []


async def test_the_openapi_document_declares_the_real_answers(api: httpx.AsyncClient) -> None:
    spec = (await api.get("/openapi.json")).json()
    assert "HTTPValidationError" not in json.dumps(spec)
    assert "ValidationError" not in spec["components"]["schemas"]
    expected = {
        ("get", "/jobs"): {"200", "401", "413", "422", "503"},
        ("get", "/jobs/{job_id}"): {"200", "401", "404", "413", "422", "503"},
        ("get", "/jobs/{job_id}/history"): {"200", "401", "404", "413", "422", "503"},
        ("get", "/jobs/{job_id}/verify"): {"200", "401", "404", "413", "422", "503"},
        ("get", "/fleet"): {"200", "401", "413", "422", "503"},
        ("get", "/stats"): {"200", "401", "413", "422", "503"},
        ("get", "/sla"): {"200", "401", "413", "422", "503"},
        ("get", "/fairness"): {"200", "401", "413", "422", "503"},
        ("get", "/metrics"): {"200", "401", "413", "422", "503"},
        ("get", "/dashboard/data"): {"200", "401", "413", "422", "503"},
        ("get", "/healthz"): {"200", "413", "422", "503"},
        ("get", "/dashboard"): {"200", "413", "422"},
        ("get", "/asyncapi.json"): {"200", "413", "422"},
        ("post", "/jobs/{job_id}/cancel"): {
            "200",
            "400",
            "401",
            "403",
            "404",
            "409",
            "413",
            "422",
            "503",
        },
        ("post", "/jobs/{job_id}/redrive"): {
            "200",
            "400",
            "401",
            "403",
            "404",
            "409",
            "413",
            "422",
            "503",
        },
        ("post", "/redrive"): {"200", "400", "401", "403", "413", "422", "503"},
    }
    declared = {
        (m, p): set(op["responses"]) for p, ops in spec["paths"].items() for m, op in ops.items()
    }
    assert declared == expected
    error_ref = {"$ref": "#/components/schemas/ErrorOut"}
    for (method, path), codes in declared.items():
        responses = spec["paths"][path][method]["responses"]
        ok = responses["200"]["content"]
        assert all(media.get("schema") not in (None, {}) for media in ok.values()), (method, path)
        for code in codes - {"200"}:
            if path == "/healthz" and code == "503":
                continue  # the probe answers its own shape: {"status": "degraded", "reason": ...}
            assert responses[code]["content"] == {"application/json": {"schema": error_ref}}, (
                method,
                path,
                code,
            )
    assert spec["paths"]["/redrive"]["post"]["security"] == [{"HTTPBearer": []}]

"""The API's edges: no input gives a 5xx, every refusal is the service's error shape.

Regression tests for each 500 and each inconsistency issue 11 found, then Hypothesis-made
boundary values (instants in years 1 and 9999 with offsets, NUL and other control characters,
100,000-character strings, forged cursors) on every parameter of every operation. The stores are
test_api.py's seeded ones (SQLite, and MongoDB-speaking log + PostgreSQL); operator actions go to
a recording publisher, except where the real RabbitMQ client is the point.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import AsyncIterator
from datetime import timedelta, timezone
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from app.domain.events import JobEvent
from app.entrypoints.api_auth import Tokens
from app.entrypoints.api_operators import RabbitActions
from tests.e2e.test_api import OPERATE, READ, Backend, backend, client_of, store_urls

assert backend and store_urls  # test_api.py's seeded stores (imported as fixtures)

SEED = 20261203
EXAMPLES = 24
"""Hypothesis values per strategy and parameter (a fixed number, a fixed seed)."""
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


NO_UTC_FORM = ["0001-01-01T00:00:00+05:00", "0001-01-01T03:00:00+14:00", "9999-12-31T23:59:59-05:00"]


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
        ("get", "/metrics"): {"200", "401", "413", "422", "503"},
        ("get", "/dashboard/data"): {"200", "401", "413", "422", "503"},
        ("get", "/healthz"): {"200", "413", "422", "503"},
        ("get", "/dashboard"): {"200", "413", "422"},
        ("get", "/asyncapi.json"): {"200", "413", "422"},
        ("post", "/jobs/{job_id}/cancel"): {"200", "400", "401", "403", "404", "409", "413", "422", "503"},
        ("post", "/redrive"): {"200", "400", "401", "403", "413", "422", "503"},
    }
    declared = {(m, p): set(op["responses"]) for p, ops in spec["paths"].items() for m, op in ops.items()}
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


# -- Hypothesis: boundary values on every parameter -------------------------------------------


def generate(strategy: st.SearchStrategy[Any], salt: str, count: int = EXAMPLES) -> list[Any]:
    """``count`` reproducible examples of ``strategy`` (no test is run by Hypothesis itself)."""
    found: list[Any] = []

    @hypothesis_seed(int(hashlib.sha256(f"{SEED}:{salt}".encode()).hexdigest()[:8], 16))
    @settings(max_examples=count, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(strategy)
    def collect(value: Any) -> None:
        found.append(value)

    collect()
    return found[:count]


def _offset(minutes: int) -> str:
    return timezone(timedelta(minutes=minutes)).tzname(None).removeprefix("UTC") or "Z"


OFFSETS = st.one_of(
    st.sampled_from(["Z", "+00:01", "-00:01", "+05:00", "-05:00", "+14:00", "-12:00", "+23:59", "-23:59"]),
    st.integers(min_value=-(24 * 60 - 1), max_value=24 * 60 - 1).map(lambda m: _offset(m)),
)


NO_UTC_CORNERS = st.one_of(
    st.integers(min_value=1, max_value=24 * 60 - 1).map(lambda m: "0001-01-01T00:00:00" + _offset(m)),
    st.integers(min_value=1, max_value=24 * 60 - 1).map(lambda m: "9999-12-31T23:59:59" + _offset(-m)),
)
"""Instants before 0001-01-01 or after 9999-12-31 once in UTC: they have no UTC form."""
EDGE_INSTANTS = st.one_of(
    NO_UTC_CORNERS,
    st.builds(
        lambda day, hour, offset, sep: f"{day}{sep}{hour}{offset}",
        st.sampled_from(["0001-01-01", "9999-12-31", "0002-01-01", "9998-12-31"]),
        st.sampled_from(["00:00:00", "23:59:59", "12:00:00.000001"]),
        OFFSETS,
        st.sampled_from(["T", " ", "t"]),
    ),
)
"""The first and last days of the calendar in any offset, half of them with no UTC form."""

CONTROL = st.text(alphabet=st.characters(categories=["Cc", "Co", "Zl", "Zp"]), min_size=1, max_size=8)
LONE_SURROGATES = st.text(alphabet=st.characters(categories=["Cs"]), min_size=1, max_size=4)
LONG = 100_000
URL_LONG = 60_000
"""httpx refuses URLs over 64 KiB (and servers refuse request lines that long): query values
stay under it; bodies carry the 100,000-character strings."""


def hostile_text(longest: int, surrogates: bool) -> st.SearchStrategy[str]:
    """Control characters, NUL, very long strings, any text (lone surrogates only in JSON)."""
    return st.one_of(
        EDGE_INSTANTS,
        CONTROL,
        st.text(min_size=1, max_size=30).map(lambda t: t + "\x00"),
        st.just("x" * longest),
        st.integers(min_value=1000, max_value=longest // 6).map(lambda n: "é" * n),
        st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=40),
        *([LONE_SURROGATES] if surrogates else []),
    )


HOSTILE_TEXT = hostile_text(URL_LONG, surrogates=False)
FORGED_CURSORS = st.one_of(
    st.tuples(EDGE_INSTANTS, st.sampled_from(["job-done", "z", "a" * 200])).map(
        lambda p: cursor_of(*p)
    ),
    st.tuples(EDGE_INSTANTS, st.text(max_size=20)).map(lambda p: cursor_of(*p)),
    st.tuples(st.just("2026-11-27T14:00:30+00:00"), hostile_text(6000, surrogates=False)).map(
        lambda p: cursor_of(*p)
    ),
    st.binary(max_size=400).map(lambda b: base64.urlsafe_b64encode(b).decode().rstrip("=")),
    st.just("A" * URL_LONG),
)
ANY_VALUE = st.one_of(HOSTILE_TEXT, FORGED_CURSORS)
INSTANT_NAMES = {"updated_since", "updated_until", "as_of", "at", "since"}


def values_for(name: str) -> st.SearchStrategy[Any]:
    """Every hostile kind for every parameter, leaning to the kind the parameter parses."""
    if name in INSTANT_NAMES:
        return st.one_of(EDGE_INSTANTS, ANY_VALUE)
    if name == "cursor":
        return st.one_of(FORGED_CURSORS, ANY_VALUE)
    return ANY_VALUE

JSON_VALUES = st.one_of(
    hostile_text(LONG // 2, surrogates=True),  # 6-byte escapes keep a body under 64 KiB
    st.just("y" * LONG),
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(10**30), max_value=10**30),
        st.floats(allow_nan=False),
        st.lists(st.integers(), max_size=3),
        st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
    ),
)

QUERY_PARAMETERS = [
    ("/jobs", name)
    for name in [
        "status", "queue", "pool", "tenant", "model", "priority", "job_type", "updated_since",
        "updated_until", "error_code", "node_id", "limit", "cursor",
    ]
] + [
    ("/jobs/job-done", "as_of"),
    ("/stats", "minutes"),
    ("/fleet?at=2026-11-27T14:00:30Z&", "status"),
    ("/fleet?at=2026-11-27T14:00:30Z&", "by"),
    ("/fleet?at=2026-11-27T14:00:30Z&", "ids"),
    ("/fleet?", "at"),
]  # fmt: skip


def _url(path: str, name: str, value: str) -> str:
    joiner = "" if path.endswith(("?", "&")) else "?"
    return f"{path}{joiner}{name}={quote(value, safe='')}"


@pytest.mark.parametrize(("path", "name"), QUERY_PARAMETERS)
async def test_boundary_values_in_every_query_parameter(
    api: httpx.AsyncClient, path: str, name: str
) -> None:
    for value in generate(values_for(name), f"{path}:{name}"):
        response = await api.get(_url(path, name, value))
        assert response.status_code < 500, (name, value[:80], response.text[:300])
        if response.status_code != 200:  # 422, or 404 for a job with nothing before as_of
            assert_error_shape(response)


@pytest.mark.parametrize("suffix", ["", "/history", "/verify", "?as_of=2026-11-27T14:00:30Z"])
async def test_boundary_values_as_a_job_id(api: httpx.AsyncClient, suffix: str) -> None:
    # Empty or all-dot ids are URL paths of their own ("/jobs/", "/jobs/.."), not job ids.
    for value in generate(HOSTILE_TEXT.filter(lambda v: v.strip(".")), f"job_id:{suffix}"):
        response = await api.get(f"/jobs/{quote(value, safe='')}{suffix}")
        assert response.status_code in (404, 422), (value[:80], response.text[:300])
        assert_error_shape(response)


async def test_boundary_values_as_parameter_names(api: httpx.AsyncClient) -> None:
    for name in generate(HOSTILE_TEXT.filter(lambda t: t.strip("\x00") != ""), "names"):
        for _, path, _ in ENDPOINTS[:11]:
            joiner = "&" if "?" in path else "?"
            response = await api.get(f"{path}{joiner}{quote(name, safe='')}=1")
            problem = assert_error_shape(response, 422)
            assert problem["error"].startswith("unknown query parameter")
            assert len(response.text) < 5000  # a long name is not echoed back whole



@pytest.mark.parametrize(
    ("path", "field", "base"),
    [
        ("/jobs/job-waiting/cancel", "actor", {}),
        ("/jobs/job-waiting/cancel", "reason", {"actor": "ann"}),
        ("/redrive", "actor", {"dry_run": True}),
        ("/redrive", "reason", {"actor": "ann", "dry_run": True}),
        ("/redrive", "pool", {"actor": "ann", "dry_run": True}),
        ("/redrive", "since", {"actor": "ann", "dry_run": True}),
        ("/redrive", "limit", {"actor": "ann", "dry_run": True}),
        ("/redrive", "dry_run", {"actor": "ann", "limit": 1}),
    ],
)
async def test_boundary_values_in_every_body_field(
    api: httpx.AsyncClient, recorder: Recorder, path: str, field: str, base: dict[str, Any]
) -> None:
    strategy = st.one_of(EDGE_INSTANTS, JSON_VALUES) if field in INSTANT_NAMES else JSON_VALUES
    for value in generate(strategy, f"{path}:{field}"):
        body = json.dumps(base | {field: value})  # ASCII escapes: lone surrogates get through
        response = await api.post(path, content=body, headers={"content-type": "application/json"})
        assert response.status_code < 500, (field, repr(value)[:80], response.text[:300])
        if response.status_code != 200:
            assert_error_shape(response)
    for event in recorder.events:  # whatever was accepted made a valid, storable event
        assert "\x00" not in event.model_dump_json()

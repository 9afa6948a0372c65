"""Hypothesis-made boundary values on every parameter of every operation: instants in years 1
and 9999 with offsets, NUL and other control characters, lone surrogates, 100,000-character
strings, forged cursors. Never a 5xx; every refusal is a 4xx in the service's error shape.

Values are generated from a fixed seed, a fixed number per parameter, and sent to the app over
test_api.py's seeded stores (SQLite, and MongoDB-speaking log + PostgreSQL).
"""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import timedelta, timezone
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from tests.e2e.test_api import backend, store_urls
from tests.e2e.test_api_regressions import (
    ENDPOINTS,
    Recorder,
    api,
    assert_error_shape,
    cursor_of,
    recorder,
)

assert backend and store_urls and api and recorder  # fixtures, imported

SEED = 20261203
EXAMPLES = 24
"""Hypothesis values per strategy and parameter (a fixed number, a fixed seed)."""


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
    st.sampled_from(
        ["Z", "+00:01", "-00:01", "+05:00", "-05:00", "+14:00", "-12:00", "+23:59", "-23:59"]
    ),
    st.integers(min_value=-(24 * 60 - 1), max_value=24 * 60 - 1).map(lambda m: _offset(m)),
)


NO_UTC_CORNERS = st.one_of(
    st.integers(min_value=1, max_value=24 * 60 - 1).map(
        lambda m: "0001-01-01T00:00:00" + _offset(m)
    ),
    st.integers(min_value=1, max_value=24 * 60 - 1).map(
        lambda m: "9999-12-31T23:59:59" + _offset(-m)
    ),
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

CONTROL = st.text(
    alphabet=st.characters(categories=["Cc", "Co", "Zl", "Zp"]), min_size=1, max_size=8
)
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
INSTANT_NAMES = {"updated_since", "updated_until", "as_of", "at", "since", "until"}


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
    ("/sla", "since"),
    ("/sla", "until"),
    ("/sla", "by"),
    ("/sla", "source"),
    ("/fairness", "since"),
    ("/fairness", "factor"),
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

"""The fast path of ``rejection_reason`` (pydantic's JSON parser alone) against the step-by-step
``diagnose`` (UTF-8, Python's JSON parser, then pydantic): same events accepted, same reasons.

The two parsers differ at the edges (NaN, lone surrogates, invalid UTF-8 inside strings,
whitespace, number forms, duplicate keys, nesting depth): these tests put bodies right there.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from app.domain.events import JobEvent
from app.services.ingest import diagnose, rejection_reason
from tests.fuzz.corpus import event, hand_cases, undecodable


def outcome(result: tuple[JobEvent | None, str | None]) -> tuple[str | None, Any]:
    parsed, reason = result
    return reason, parsed.model_dump(mode="json") if parsed is not None else None


def agree(body: bytes) -> tuple[str | None, Any]:
    fast, slow = outcome(rejection_reason(body)), outcome(diagnose(body))
    assert fast == slow, body[:200]
    return fast


VALID = json.dumps(event("job-1", "completed")).encode()

TOKENS = [
    b"\xc3\x28", b"\xc0\xaf", b"\xed\xa0\x80", b"\xff", b"\xe2\x82", b"\x00", b"\x7f", b"\t",
    b"\x0c", b"\\ud800", b"\\udc00", b"\\u0000", b"\\", b'"', b",", b":", b"{", b"}", b"[", b"]",
    b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-0", b"01", b"1.0", b"true", b"null", b" ",
    b"\xef\xbb\xbf", b'"attempt": 2, ', b'"attempt": 1.5, ', b'"extra": 1, ', "é".encode(),
]  # fmt: skip


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid event's bytes with a few tokens inserted, bytes removed or replaced."""
    body = bytearray(VALID)
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(body)))
        kind = draw(st.sampled_from(["insert", "delete", "replace"]))
        token = draw(st.sampled_from(TOKENS) | st.binary(min_size=1, max_size=3))
        if kind == "insert":
            body[at:at] = token
        elif kind == "delete":
            del body[at : at + draw(st.integers(1, 4))]
        else:
            body[at : at + len(token)] = token
    return bytes(body)


ODD_LITERALS = [
    "1", "1.0", "1e0", "10E-1", "-0", "true", "NaN", '"1"', '"n\\u0000"', '"\\ud800"',
    '"\\uD834\\uDD1E"', '"n\\/1"', '"\\u00e9"', '"2026-11-27T10:00:00Z"',
    '"2026-11-27T10:00:00+14:00"', '"0001-01-01T00:00:00+00:01"', "null", "[]",
]  # fmt: skip


@st.composite
def odd_values(draw: st.DrawFn) -> bytes:
    """A valid event whose fields take odd JSON text (escapes, numbers, literals) verbatim."""
    field = draw(st.sampled_from(["attempt", "node_id", "job_id", "source", "occurred_at"]))
    literal = draw(st.sampled_from(ODD_LITERALS))
    data = event("job-2", "completed")
    text = json.dumps(data).replace(
        f'"{field}": {json.dumps(data[field])}', f'"{field}": {literal}'
    )
    return text.encode()


@settings(max_examples=400, deadline=None)
@given(mutated() | odd_values() | st.binary(max_size=64))
def test_the_fast_path_agrees_with_the_diagnosis(body: bytes) -> None:
    agree(body)


def test_they_agree_on_the_hostile_corpus_and_reach_every_verdict() -> None:
    verdicts = {
        (reason or "accepted").split(":", 1)[0]
        for case in [*hand_cases("unit", flood=2), *undecodable()]
        for reason, _ in [agree(case.body)]
    }
    assert verdicts == {"accepted", "invalid_utf8", "invalid_json", "invalid_event"}


def test_a_duplicate_key_keeps_the_last_value_on_both_paths() -> None:
    body = VALID.replace(b'"attempt": 1', b'"attempt": 1, "attempt": 2')
    reason, data = agree(body)
    assert reason is None and data["attempt"] == 2

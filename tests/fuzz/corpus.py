"""Hand-written hostile inputs, each with the outcome Jobtrail must give it.

Outcomes: ``invalid_utf8`` / ``invalid_json`` / ``invalid_event`` (quarantined with a reason of
that prefix), ``flagged:<kind>`` (recorded, and the job's state carries an anomaly of that kind
for this very event), ``recorded`` (a valid event, recorded as is) and ``duplicate`` (an event
already recorded: stored once). ``header`` is the ``x-jobtrail-job-id`` header (None: absent).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

KNOWN_BUG_NESTING = 100_000
"""Nesting deep enough to overflow Python's json module (see the xfail test)."""


@dataclass(frozen=True)
class Case:
    """One hostile message and what must become of it."""

    name: str
    body: bytes
    expect: str
    header: Any = None
    routing_key: str = "job.completed"
    event_id: str | None = field(default=None, compare=False)


def event(job_id: Any, kind: str = "completed", **fields: Any) -> dict[str, Any]:
    """A valid event of ``kind`` as a JSON-ready dict (a new event id each time)."""
    base: dict[str, Any] = {
        "type": kind,
        "event_id": str(uuid.uuid4()),
        "job_id": job_id,
        "occurred_at": datetime.now(UTC).isoformat(),  # producers' clocks agree: no skew
        "attempt": 1,
        "source": "fuzz",
    }
    extra: dict[str, dict[str, Any]] = {
        "submitted": {"job_type": "sync", "model": "m", "priority": "test", "tenant": "t",
                      "pool": "fz", "queue": "jobtrail.work.fz.sync"},
        "reserved": {"node_id": "n1"},
        "heartbeat": {"node_id": "n1"},
        "completed": {"node_id": "n1"},
        "failed": {"node_id": "n1", "error_code": "e", "retryable": False},
        "cancelled": {"actor": "ops"},
        "redriven": {"actor": "ops", "pool": "fz", "queue": "jobtrail.work.fz.sync"},
    }  # fmt: skip
    return base | extra.get(kind, {}) | fields


def _case(name: str, data: Any, expect: str, **kw: Any) -> Case:
    body = data if isinstance(data, bytes) else json.dumps(data).encode()
    event_id = data.get("event_id") if isinstance(data, dict) else None
    job = data.get("job_id") if isinstance(data, dict) else None
    header = kw.pop("header", job if isinstance(job, str) and job else None)
    return Case(name, body, expect, header=header, event_id=event_id, **kw)


def _non_finite(job: str, kind: str, key: str, literal: str) -> Case:
    """``key`` set to a JSON extension Python accepts (NaN, Infinity): never a valid number."""
    text = json.dumps(event(job, kind, **{key: 1})).replace(f'"{key}": 1', f'"{key}": {literal}')
    return Case(f"{key}_{literal.lower()}", text.encode(), "invalid_event", header=job)


def undecodable() -> list[Case]:
    """Bytes that are not UTF-8, and text that is not JSON."""
    raw = {
        "utf8_ff": (b"\xff\xfe\xfd", "invalid_utf8"),
        "utf8_in_string": (b'{"type": "completed", "job_id": "\xc3\x28"}', "invalid_utf8"),
        "utf8_overlong_slash": (b'{"job_id": "\xc0\xaf"}', "invalid_utf8"),
        "utf8_encoded_surrogate": (b'{"job_id": "\xed\xa0\x80"}', "invalid_utf8"),
        "utf8_truncated": (b'{"a": "\xe2\x82', "invalid_utf8"),
        "latin1": ('{"node_id": "n\u00e9"}'.encode("latin-1"), "invalid_utf8"),
        "empty": (b"", "invalid_json"),
        "open_brace": (b"{", "invalid_json"),
        "unterminated_list": (b"[1, 2", "invalid_json"),
        "trailing_comma": (b'{"type": "completed",}', "invalid_json"),
        "single_quotes": (b"{'type': 'completed'}", "invalid_json"),
        "utf8_bom": (b"\xef\xbb\xbf{}", "invalid_json"),
        "nul_byte": (b"\x00", "invalid_json"),
        "two_documents": (b"{} {}", "invalid_json"),
        "javascript": (b"function(){return 1}", "invalid_json"),
        "one_mib_garbage": (b"a" * (1 << 20), "invalid_json"),
        "nested_deep_but_parsable": (b"[" * 900 + b"]" * 900, "invalid_event"),
        "null": (b"null", "invalid_event"),
        "list": (b"[]", "invalid_event"),
        "number": (b"42", "invalid_event"),
        "string": (b'"completed"', "invalid_event"),
        "empty_object": (b"{}", "invalid_event"),
        "nan_only": (b"NaN", "invalid_event"),
    }
    return [Case(name, body, expect) for name, (body, expect) in raw.items()]


MALFORMED: dict[str, tuple[str, dict[str, Any]]] = {
    "unknown_field": ("completed", {"extra": 1}),
    "mongo_operator_field": ("completed", {"$set": {"status": "x"}}),
    "proto_field": ("completed", {"__proto__": {"admin": True}}),
    "unknown_type": ("exploded", {}),
    "type_uppercase": ("COMPLETED", {}),
    "type_null": ("completed", {"type": None}),
    "version_2": ("completed", {"version": 2}),
    "attempt_word": ("completed", {"attempt": "one"}),
    "attempt_list": ("completed", {"attempt": [1]}),
    "attempt_zero": ("completed", {"attempt": 0}),
    "attempt_negative": ("completed", {"attempt": -1}),
    "attempt_fraction": ("completed", {"attempt": 1.5}),
    "attempt_huge": ("completed", {"attempt": 10**400}),
    "event_id_not_uuid": ("completed", {"event_id": "not-a-uuid"}),
    "event_id_number": ("completed", {"event_id": 5}),
    "occurred_at_words": ("completed", {"occurred_at": "yesterday"}),
    "occurred_at_naive": ("completed", {"occurred_at": "2026-11-27T10:00:00"}),
    "node_id_too_long": ("completed", {"node_id": "n" * 201}),
    "node_id_empty": ("completed", {"node_id": ""}),
    "message_too_long": ("failed", {"error_message": "x" * 4001}),
    "retryable_list": ("failed", {"retryable": []}),
    "cancel_without_actor": ("cancelled", {"actor": None}),
    "payload_over_64k": ("submitted", {"payload": {"x": "y" * 70_000}}),
    "payload_many_keys": ("submitted", {"payload": {f"k{i}": i for i in range(9_000)}}),
}
"""Name → (type, fields overriding a valid event's): each is an invalid event."""


def malformed_events(job: str) -> list[Case]:
    """Events with unknown or missing fields, wrong types, odd numbers and oversize values."""
    cases = [
        _case(name, event(job, kind, **fields), "invalid_event")
        for name, (kind, fields) in MALFORMED.items()
    ]
    cases += [
        _non_finite(job, "submitted", "ttl_seconds", "Infinity"),
        _non_finite(job, "reserved", "lease_seconds", "NaN"),
        _non_finite(job, "completed", "duration_ms", "-Infinity"),
    ]
    for name in ("event_id", "job_id", "occurred_at", "attempt", "source", "node_id", "type"):
        data = event(job)
        del data[name]
        cases.append(_case(f"missing_{name}", data, "invalid_event", header=job))
    return cases


def hostile_job_ids(tag: str) -> list[Case]:
    """Job ids that look like MongoDB operators, paths, SQL or are far too long."""
    rejected = {
        "mongo_gt_object": {"$gt": ""},
        "mongo_gt_text": '{"$gt": ""}',
        "mongo_where": "$where",
        "mongo_ne": "$ne",
        "path_traversal": "../../etc/passwd",
        "slash": "a/b",
        "sql_quote": "x' OR '1'='1",
        "sql_comment": "x;--",
        "ten_kb": "j" * 10_240,
        "two_hundred_one": "j" * 201,
        "empty": "",
        "space": "a b",
        "nul": "a\u0000b",
        "newline": "a\nb",
        "fullwidth_letters": "\uff21\uff22",
        "list": ["a"],
        "number": 7,
        "null": None,
    }
    cases = [_case(f"job_id_{k}", event(v), "invalid_event") for k, v in rejected.items()]
    # Valid by the pattern, and must stay plain strings: never a path, never an operator.
    for name, job_id in {
        "dot": f"a.b.{tag}",
        "dots_only": f"...{tag}",
        "colon": f"x:{tag}:y",
    }.items():
        submitted = event(job_id, "submitted")
        cases.append(_case(f"job_id_{name}_submitted", submitted, "recorded"))
        cases.append(_case(f"job_id_{name}_reserved", event(job_id, "reserved"), "recorded"))
    return cases


def hostile_headers(tag: str) -> list[Case]:
    """Valid bodies behind odd routing headers: the body, not the header, names the job."""
    cases = []
    headers: dict[str, Any] = {
        "operator": '{"$gt": ""}',
        "ten_kb": "h" * 10_240,
        "integer": 12345,
        "other_job": f"someone-else-{tag}",
        "absent": None,
    }
    for name, header in headers.items():
        data = event(f"fz-{tag}-hdr-{name}", "submitted")
        cases.append(_case(f"header_{name}", data, "recorded", header=header))
    bad = _case("header_absent_invalid_body", b"{not json", "invalid_json", header=None)
    return [*cases, bad]


def impossible_histories(tag: str) -> list[Case]:
    """Valid events in an order that makes no sense: recorded and flagged, never dropped."""
    job, ghost = f"fz-{tag}-odd", f"fz-{tag}-ghost"
    first = event(job, "submitted")
    steps = [
        ("submitted", first, "recorded"),
        ("completed_unreserved", event(job), "flagged:not_reserved"),
        ("completed_again", event(job), "flagged:after_terminal"),
        ("reserved_after_terminal", event(job, "reserved"), "flagged:after_terminal"),
        ("submitted_twice", event(job, "submitted"), "flagged:after_terminal"),
        ("resent_first", first, "duplicate"),
        ("ghost_completed", event(ghost), "flagged:unknown_job"),
        ("ghost_failed", event(ghost, "failed", attempt=1_000_000), "flagged:unknown_job"),
        ("ghost_heartbeat", event(ghost, "heartbeat"), "flagged:unknown_job"),
    ]
    live = f"fz-{tag}-live"
    steps += [
        ("live_submitted", event(live, "submitted"), "recorded"),
        ("live_failed_future_attempt", event(live, "failed", attempt=7), "flagged:future_attempt"),
        ("live_redriven_while_queued", event(live, "redriven", attempt=2), "flagged:unexpected"),
        ("live_reserved", event(live, "reserved"), "recorded"),
        ("live_heartbeat_other_node", event(live, "heartbeat", node_id="n9"), "flagged:unexpected"),
        ("live_submitted_twice", event(live, "submitted"), "flagged:duplicate_submission"),
    ]
    return [_case(name, data, expect) for name, data, expect in steps]


def nul_strings(tag: str) -> list[Case]:
    """NUL characters in fields the projection stores (a known bug: see the xfail test)."""
    nul = f"fz-{tag}-nul"
    failed = {"retryable": True, "error_code": "e\u0000code", "error_message": "m\u0000"}
    steps = [
        ("nul_tenant_model", event(nul, "submitted", tenant="t\u0000", model="m\u0000")),
        ("nul_node", event(nul, "reserved", node_id="n\u0000")),
        ("nul_error", event(nul, "failed", node_id="n\u0000", **failed)),
    ]
    return [_case(name, data, "recorded") for name, data in steps]


def dates_beyond_utc(tag: str) -> list[Case]:
    """Instants that are valid where they are but outside Python's range once in UTC (a known
    bug: see the xfail test)."""
    job = f"fz-{tag}-date"
    return [
        _case("year_1_east", event(job, occurred_at="0001-01-01T00:00:00+14:00"), "recorded"),
        _case("year_9999_west", event(job, occurred_at="9999-12-31T23:59:59-14:00"), "recorded"),
    ]


def refused_queue_names(tag: str) -> list[Case]:
    """Jobs whose work queue RabbitMQ refuses to declare (``amq.`` prefix, over 255 bytes): their
    retry cannot be published (a known bug: it must not block others; see the xfail test)."""
    cases = []
    for name, queue in {"amq_prefix": "amq.evil", "wide": "\u0439" * 200}.items():
        job = f"fz-{tag}-queue-{name}"
        cases += [
            _case(f"queue_{name}_submitted", event(job, "submitted", queue=queue), "recorded"),
            _case(f"queue_{name}_reserved", event(job, "reserved"), "recorded"),
            _case(f"queue_{name}_failed", event(job, "failed", retryable=True), "recorded"),
        ]
    return cases


def duplicate_flood(tag: str, copies: int) -> list[Case]:
    """One event sent ``copies`` times: stored once."""
    data = event(f"fz-{tag}-flood", "submitted")
    first = _case("flood_first", data, "recorded")
    return [first] + [_case(f"flood_copy_{n}", data, "duplicate") for n in range(copies - 1)]


def hand_cases(tag: str, flood: int = 50) -> list[Case]:
    """The whole hand-written corpus (order matters within a job: it is published in order)."""
    job = f"fz-{tag}-bad"
    return [
        *undecodable(),
        *malformed_events(job),
        *hostile_job_ids(tag),
        *hostile_headers(tag),
        *impossible_histories(tag),
        *duplicate_flood(tag, flood),
    ]


def deep_nesting() -> Case:
    """An array nested deeper than Python's recursion limit (a known bug: see the xfail test)."""
    return Case("nested_100k", b"[" * KNOWN_BUG_NESTING + b"]" * KNOWN_BUG_NESTING, "invalid_json")

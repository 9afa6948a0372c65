"""The event envelope, the discriminated union and the canonical encoding."""

from __future__ import annotations

import json
import typing
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from pydantic import ValidationError

from app.domain.events import (
    DERIVED_TYPES,
    EVENT_TYPES,
    MAX_PAYLOAD_BYTES,
    Cancelled,
    Completed,
    DeadLettered,
    Expired,
    Failed,
    Heartbeat,
    JobEvent,
    Redriven,
    Rerouted,
    Reserved,
    Retried,
    Routed,
    Submitted,
    as_utc,
    canonical_json,
    event_from_dict,
    parse_event,
)
from tests.unit import factories as f

SUBMITTED: dict[str, Any] = {
    "type": "submitted",
    "event_id": "6f1c1b6e-2a53-4f7e-8d1e-0f3c7a9b1d20",
    "job_id": "job-1",
    "occurred_at": "2024-01-01T12:00:00+00:00",
    "attempt": 1,
    "source": "cloud",
    "job_type": "sync",
    "model": "llama",
    "priority": "urgent",
    "tenant": "acme",
    "pool": "shared",
    "queue": "jobtrail.work.shared.sync",
}

ONE_OF_EACH: dict[str, dict[str, Any]] = {
    "submitted": {},
    "reserved": {"node_id": "n1"},
    "heartbeat": {"node_id": "n1"},
    "completed": {"node_id": "n1", "duration_ms": 12},
    "failed": {"node_id": "n1", "error_code": "oom", "retryable": True},
    "expired": {"reason": "lease"},
    "routed": {"routing": {"plugin": "p", "version": "1", "cooldown_seconds": 2.5}},
    "retried": {"pool": "p", "queue": "q"},
    "rerouted": {"from_pool": "p", "pool": "p2", "queue": "q"},
    "dead_lettered": {"reason": "retries_exhausted"},
    "cancelled": {"actor": "ops"},
    "redriven": {"actor": "ops", "pool": "p", "queue": "q"},
}

EXPECTED_CLASS = {
    "submitted": Submitted,
    "reserved": Reserved,
    "heartbeat": Heartbeat,
    "completed": Completed,
    "failed": Failed,
    "expired": Expired,
    "routed": Routed,
    "retried": Retried,
    "rerouted": Rerouted,
    "dead_lettered": DeadLettered,
    "cancelled": Cancelled,
    "redriven": Redriven,
}

ENVELOPE = {k: SUBMITTED[k] for k in ("event_id", "job_id", "occurred_at", "attempt", "source")}


def _event(event_type: str, **changes: Any) -> dict[str, Any]:
    base = dict(SUBMITTED) if event_type == "submitted" else dict(ENVELOPE)
    return {**base, **ONE_OF_EACH[event_type], "type": event_type, **changes}


def _field_errors(exc: pytest.ExceptionInfo[ValidationError]) -> list[str]:
    return [".".join(str(part) for part in err["loc"]) for err in exc.value.errors()]


# --- envelope -----------------------------------------------------------------------------------


@pytest.mark.parametrize("job_id", ["job-1", "a", "A.b_c:d-9", "x" * 200, "tenant:42.batch-7"])
def test_job_id_accepts_the_documented_alphabet(job_id: str) -> None:
    assert event_from_dict(_event("submitted", job_id=job_id)).job_id == job_id


@pytest.mark.parametrize(
    "job_id",
    [{"$gt": ""}, "a/b", "", "x" * 201, "a b", "job\n", "\njob", "jöb", "a*", None, 42],
    ids=[
        "operator",
        "slash",
        "empty",
        "201",
        "space",
        "newline",
        "lead-newline",
        "unicode",
        "star",
        "none",
        "int",
    ],
)
def test_job_id_rejects_anything_else(job_id: object) -> None:
    with pytest.raises(ValidationError) as exc:
        event_from_dict(_event("submitted", job_id=job_id))
    assert _field_errors(exc) == ["submitted.job_id"]


def test_occurred_at_must_be_timezone_aware() -> None:
    with pytest.raises(ValidationError, match="timezone"):
        event_from_dict(_event("reserved", occurred_at="2024-01-01T12:00:00"))
    with pytest.raises(ValidationError, match="timezone"):
        f.reserved(at=datetime(2024, 1, 1, 12, 0))


def test_occurred_at_keeps_any_offset() -> None:
    event = event_from_dict(_event("reserved", occurred_at="2024-01-01T15:00:00+03:00"))
    assert event.occurred_at == datetime(2024, 1, 1, 12, 0, tzinfo=UTC)
    assert event.occurred_at.utcoffset() == timedelta(hours=3)


@pytest.mark.parametrize("attempt", [0, -1, 1_000_001, "one", 1.5])
def test_attempt_is_a_positive_integer(attempt: object) -> None:
    with pytest.raises(ValidationError) as exc:
        event_from_dict(_event("completed", attempt=attempt))
    assert _field_errors(exc)[0] == "completed.attempt"


def test_attempt_one_and_the_maximum_are_accepted() -> None:
    assert event_from_dict(_event("completed", attempt=1)).attempt == 1
    assert event_from_dict(_event("completed", attempt=1_000_000)).attempt == 1_000_000


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_unknown_fields_are_rejected(event_type: str) -> None:
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        event_from_dict(_event(event_type, surprise=1))


def test_unknown_fields_inside_the_retry_override_are_rejected() -> None:
    with pytest.raises(ValidationError) as exc:
        event_from_dict(_event("submitted", retry={"initial_interval_seconds": 1, "jitter": 0.5}))
    assert _field_errors(exc) == ["submitted.retry.jitter"]


@pytest.mark.parametrize(
    ("event_type", "changes"),
    [
        ("submitted", {"source": ""}),
        ("reserved", {"node_id": ""}),
        ("reserved", {"lease_seconds": 0}),
        ("reserved", {"lease_seconds": float("inf")}),
        ("submitted", {"ttl_seconds": float("nan")}),
        ("submitted", {"max_attempts": 0}),
        ("submitted", {"retry": {"backoff_coefficient": 0.5}}),
        ("submitted", {"fallback_pools": ["p"] * 33}),
        ("submitted", {"payload": {"x": float("nan")}}),
        ("submitted", {"job_type": "cron"}),
        ("submitted", {"priority": "high"}),
        ("failed", {"error_message": "x" * 4001}),
        ("completed", {"duration_ms": -1}),
        ("expired", {"reason": "boredom"}),
        ("dead_lettered", {"reason": "boredom"}),
        ("completed", {"version": 2}),
        ("completed", {"event_id": "not-a-uuid"}),
    ],
)
def test_field_constraints(event_type: str, changes: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        event_from_dict(_event(event_type, **changes))


def test_events_are_frozen() -> None:
    event = f.completed()
    with pytest.raises(ValidationError, match="frozen"):
        event.attempt = 2  # type: ignore[misc]


# --- payload size -------------------------------------------------------------------------------


def test_payload_up_to_64_kib_is_accepted() -> None:
    text = "x" * (MAX_PAYLOAD_BYTES - 2)  # the JSON string adds two quotes
    assert f.submitted(payload=text).payload == text


def test_payload_over_64_kib_is_rejected_with_its_size() -> None:
    with pytest.raises(ValidationError, match=f"payload is {MAX_PAYLOAD_BYTES + 1} bytes"):
        f.submitted(payload="x" * (MAX_PAYLOAD_BYTES - 1))


def test_payload_size_counts_utf8_bytes_not_characters() -> None:
    chars = (MAX_PAYLOAD_BYTES - 2) // 2 + 1  # "é" is two bytes
    with pytest.raises(ValidationError, match="payload is"):
        f.submitted(payload="é" * chars)
    assert f.submitted(payload="é" * (chars - 1)).payload is not None


# --- operator actions ---------------------------------------------------------------------------


@pytest.mark.parametrize("event_type", ["cancelled", "redriven"])
def test_operator_actions_need_an_actor(event_type: str) -> None:
    with pytest.raises(ValidationError, match=f"a {event_type} event names its actor"):
        event_from_dict(_event(event_type, actor=None))
    data = _event(event_type)
    del data["actor"]
    with pytest.raises(ValidationError, match="names its actor"):
        event_from_dict(data)
    assert event_from_dict(_event(event_type, actor="ops@acme")).actor == "ops@acme"


def test_other_events_may_name_an_actor_or_not() -> None:
    assert event_from_dict(_event("failed")).actor is None
    assert event_from_dict(_event("failed", actor="ops")).actor == "ops"


# --- the union ----------------------------------------------------------------------------------


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_type_selects_the_model(event_type: str) -> None:
    event = event_from_dict(_event(event_type))
    assert type(event) is EXPECTED_CLASS[event_type]
    assert event.type == event_type


def test_unknown_or_missing_type_is_rejected() -> None:
    with pytest.raises(ValidationError, match="does not match any of the expected tags"):
        event_from_dict(_event("completed", type="exploded"))
    data = _event("completed")
    del data["type"]
    with pytest.raises(ValidationError, match="Unable to extract tag"):
        event_from_dict(data)


def test_fields_of_another_type_do_not_fit() -> None:
    with pytest.raises(ValidationError) as exc:
        event_from_dict({**_event("completed"), "type": "failed"})
    assert set(_field_errors(exc)) == {
        "failed.error_code",
        "failed.retryable",
        "failed.duration_ms",
    }


def test_event_type_names_match_the_union() -> None:
    members = typing.get_args(typing.get_args(JobEvent)[0])
    literals = [model.model_fields["type"].default for model in members]
    assert literals == list(EVENT_TYPES)
    assert {"expired", "routed", "retried", "rerouted", "dead_lettered"} == DERIVED_TYPES
    assert set(EVENT_TYPES) > DERIVED_TYPES


# --- canonical JSON -----------------------------------------------------------------------------


def test_canonical_json_sorts_keys_and_has_no_spaces() -> None:
    text = canonical_json(event_from_dict(_event("failed", error_message="é ü")))
    decoded = json.loads(text)
    assert list(decoded) == sorted(decoded)
    assert text == json.dumps(decoded, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert ": " not in text
    assert ", " not in text.replace("é ü", "")
    assert "é ü" in text  # UTF-8 text, not \\u escapes


def test_canonical_json_does_not_depend_on_input_order() -> None:
    data = _event("submitted", payload={"b": 1, "a": [2, {"d": 3, "c": 4}]})
    reordered = dict(reversed(list(data.items())))
    first, second = event_from_dict(data), event_from_dict(reordered)
    assert canonical_json(first) == canonical_json(second)
    assert '"payload":{"a":[2,{"c":4,"d":3}],"b":1}' in canonical_json(first)


def test_canonical_json_is_fixed_for_a_known_event() -> None:
    event = event_from_dict(_event("completed"))
    assert canonical_json(event) == (
        '{"actor":null,"attempt":1,"duration_ms":12,'
        '"event_id":"6f1c1b6e-2a53-4f7e-8d1e-0f3c7a9b1d20","job_id":"job-1","node_id":"n1",'
        '"occurred_at":"2024-01-01T12:00:00Z","source":"cloud","type":"completed","version":1}'
    )


@settings(max_examples=200, deadline=None)
@given(f.any_events())
def test_canonical_json_round_trips(event: JobEvent) -> None:
    text = canonical_json(event)
    again = parse_event(text)
    assert again == event
    assert type(again) is type(event)
    assert canonical_json(again) == text
    assert parse_event(text.encode()) == event


def test_parse_event_rejects_invalid_json() -> None:
    with pytest.raises(ValidationError, match="Invalid JSON"):
        parse_event("{not json")


def test_as_utc_normalises_to_utc_with_microseconds() -> None:
    moment = datetime(2024, 1, 1, 15, 0, tzinfo=timezone(timedelta(hours=3)))
    assert as_utc(moment) == "2024-01-01T12:00:00.000000+00:00"
    assert (
        as_utc(datetime(2024, 1, 1, 12, 0, 0, 5, tzinfo=UTC)) == "2024-01-01T12:00:00.000005+00:00"
    )


@pytest.mark.parametrize(
    ("queue", "message"),
    [("amq.evil", "reserved by RabbitMQ"), ("й" * 130, "at most 255 bytes")],
)
def test_work_queue_names_rabbitmq_refuses_are_rejected(queue: str, message: str) -> None:
    data = json.loads(canonical_json(_submitted_for_queue("q")))
    data["queue"] = queue
    with pytest.raises(ValidationError, match=message):
        parse_event(json.dumps(data))


@pytest.mark.parametrize("instant", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-00:01"])
def test_an_instant_without_a_utc_form_is_rejected(instant: str) -> None:
    data = json.loads(canonical_json(_submitted_for_queue("q")))
    data["occurred_at"] = instant
    with pytest.raises(ValidationError, match="out of range once converted to UTC"):
        parse_event(json.dumps(data))


@pytest.mark.parametrize(
    "instant", ["0001-01-01T00:00:00-14:00", "9999-12-31T23:59:59+14:00", "0001-01-01T00:00:00Z"]
)
def test_the_first_and_last_years_are_accepted_where_they_have_a_utc_form(instant: str) -> None:
    data = json.loads(canonical_json(_submitted_for_queue("q")))
    data["occurred_at"] = instant
    assert parse_event(json.dumps(data)).occurred_at == datetime.fromisoformat(instant)


def test_nul_characters_are_rejected_in_names_and_texts() -> None:
    data = json.loads(canonical_json(_submitted_for_queue("q")))
    data["tenant"] = "t\u0000"
    with pytest.raises(ValidationError, match="tenant"):
        parse_event(json.dumps(data))


def _submitted_for_queue(queue: str) -> Submitted:
    return Submitted(
        event_id=uuid.uuid4(),
        job_id="j",
        occurred_at=datetime(2026, 1, 1, tzinfo=UTC),
        attempt=1,
        source="cloud",
        job_type="sync",
        model="m",
        priority="bulk",
        tenant="t",
        pool="p",
        queue=queue,
    )

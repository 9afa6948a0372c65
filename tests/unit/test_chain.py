"""The per-job hash chain: intact chains verify, every kind of tampering names its first seq."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.domain.chain import (
    GENESIS_HASH,
    MILLISECOND,
    ChainBreak,
    RecordedEvent,
    StoredEvent,
    at_unit,
    link_hash,
    verify_chain,
)
from app.domain.events import JobEvent, canonical_json
from tests.unit import factories as f
from tests.unit.factories import JOB, T0


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def chain(length: int = 5, job_id: str = JOB) -> list[StoredEvent]:
    events: list[JobEvent] = [
        f.submitted(job_id, at=at(0)),
        f.reserved(job_id, at=at(1)),
        f.failed(job_id, at=at(2)),
        f.retried(job_id, at=at(3)),
        f.reserved(job_id, at=at(4), attempt=2),
        f.completed(job_id, at=at(5), attempt=2),
    ]
    return f.stored_chain(events[:length], [at(n + 0.5) for n in range(length)])


def relink(entries: list[StoredEvent], start: int = 0) -> list[StoredEvent]:
    """What a careful forger does: recompute every hash from ``start`` on so each link looks right."""
    out = list(entries[:start])
    prev = out[-1].hash if out else GENESIS_HASH
    for entry in entries[start:]:
        digest = link_hash(entry.job_id, entry.seq, entry.recorded_at, prev, entry.data)
        out.append(replace(entry, prev_hash=prev, hash=digest))
        prev = digest
    return out


def with_data(entry: StoredEvent, **changes: object) -> StoredEvent:
    data = json.loads(entry.data)
    data.update(changes)
    return replace(entry, data=json.dumps(data, sort_keys=True, separators=(",", ":")))


def test_an_intact_chain_verifies() -> None:
    entries = chain()
    assert entries[0].prev_hash == GENESIS_HASH
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(entries))
    assert verify_chain(JOB, entries) is None
    assert verify_chain(JOB, iter(entries)) is None


def test_an_empty_chain_verifies() -> None:
    assert verify_chain(JOB, []) is None


def test_altered_data_breaks_at_that_seq() -> None:
    entries = chain()
    entries[2] = with_data(entries[2], error_code="nothing_to_see")
    assert verify_chain(JOB, entries) == ChainBreak(
        JOB, 3, "hash does not match the entry's content"
    )


def test_altered_recorded_at_breaks_at_that_seq() -> None:
    entries = chain()
    entries[1] = replace(entries[1], recorded_at=entries[1].recorded_at + timedelta(microseconds=1))
    assert verify_chain(JOB, entries) == ChainBreak(
        JOB, 2, "hash does not match the entry's content"
    )


def test_an_altered_hash_breaks_at_that_seq() -> None:
    entries = chain()
    entries[3] = replace(entries[3], hash="f" * 64)
    assert verify_chain(JOB, entries) == ChainBreak(
        JOB, 4, "hash does not match the entry's content"
    )


def test_altered_data_with_its_own_hash_recomputed_breaks_at_the_next_seq() -> None:
    entries = chain()
    forged = with_data(entries[1], node_id="someone-else")
    entries[1] = replace(
        forged, hash=link_hash(JOB, 2, forged.recorded_at, forged.prev_hash, forged.data)
    )
    assert verify_chain(JOB, entries) == ChainBreak(
        JOB, 3, "prev_hash does not match the previous entry's hash"
    )


def test_an_altered_prev_hash_breaks_at_that_seq() -> None:
    entries = chain()
    entries[2] = replace(entries[2], prev_hash="0" * 64)
    assert verify_chain(JOB, entries) == ChainBreak(
        JOB, 3, "prev_hash does not match the previous entry's hash"
    )


@pytest.mark.parametrize(
    ("removed", "expected"), [(0, "seq 2 where 1 was expected"), (2, "seq 4 where 3 was expected")]
)
def test_a_removed_entry_breaks_at_the_entry_after_it(removed: int, expected: str) -> None:
    entries = chain()
    del entries[removed]
    assert verify_chain(JOB, entries) == ChainBreak(JOB, removed + 2, expected)


def test_a_removed_entry_is_found_even_if_later_seqs_are_renumbered() -> None:
    entries = chain()
    del entries[2]
    renumbered = [replace(e, seq=n) for n, e in enumerate(entries, start=1)]
    assert verify_chain(JOB, renumbered) == ChainBreak(
        JOB, 3, "prev_hash does not match the previous entry's hash"
    )
    relinked = relink(renumbered, start=2)
    assert verify_chain(JOB, relinked) is None  # only a full rewrite from the cut on passes …
    assert relinked[-1].hash != chain()[-1].hash  # … and it changes every later hash


def test_an_inserted_entry_breaks_at_the_entry_it_displaces() -> None:
    entries = chain()
    intruder_event = f.heartbeat(at=at(1.7))
    data = canonical_json(intruder_event)
    digest = link_hash(JOB, 3, at(1.7), entries[1].hash, data)
    intruder = StoredEvent(
        JOB,
        3,
        str(intruder_event.event_id),
        at(1.7),
        entries[1].hash,
        digest,
        data,
        "heartbeat",
        1,
        at(1.7),
    )
    tampered = [*entries[:2], intruder, *entries[2:]]
    assert verify_chain(JOB, tampered) == ChainBreak(JOB, 3, "seq 3 where 4 was expected")


def test_an_inserted_duplicate_seq_breaks() -> None:
    entries = chain()
    tampered = [*entries[:3], entries[2], *entries[3:]]
    assert verify_chain(JOB, tampered) == ChainBreak(JOB, 3, "seq 3 where 4 was expected")


def test_swapped_entries_break_at_the_first_out_of_order_seq() -> None:
    entries = chain()
    entries[1], entries[2] = entries[2], entries[1]
    assert verify_chain(JOB, entries) == ChainBreak(JOB, 3, "seq 3 where 2 was expected")


def test_swapped_contents_under_kept_seqs_break() -> None:
    entries = chain()
    first, second = entries[1], entries[2]
    entries[1] = replace(second, seq=2, prev_hash=first.prev_hash)
    entries[2] = replace(first, seq=3, prev_hash=second.prev_hash)
    assert verify_chain(JOB, entries) == ChainBreak(
        JOB, 2, "hash does not match the entry's content"
    )


def test_an_entry_of_another_job_breaks() -> None:
    entries = chain()
    entries[2] = chain(job_id="job-2")[2]
    assert verify_chain(JOB, entries) == ChainBreak(JOB, 3, "entry belongs to job 'job-2'")


def test_verifying_against_the_wrong_job_breaks_at_the_first_seq() -> None:
    assert verify_chain("job-2", chain()) == ChainBreak("job-2", 1, f"entry belongs to job {JOB!r}")


def test_data_of_another_job_under_this_jobs_envelope_breaks() -> None:
    entries = chain()
    foreign = canonical_json(f.reserved("job-2", at=at(1)))
    entries[1] = replace(entries[1], data=foreign)
    relinked = relink(entries, start=1)
    assert verify_chain(JOB, relinked) == ChainBreak(
        JOB, 2, "stored data names another job or event id"
    )


def test_an_event_id_that_does_not_match_the_data_breaks() -> None:
    entries = chain()
    entries[3] = replace(entries[3], event_id=str(f.new_id()))
    assert verify_chain(JOB, entries) == ChainBreak(
        JOB, 4, "stored data names another job or event id"
    )


@pytest.mark.parametrize("data", ["{}", "not json", '{"type":"completed"}'])
def test_data_that_is_not_an_event_breaks(data: str) -> None:
    entries = chain()
    entries[2] = replace(entries[2], data=data)
    relinked = relink(entries, start=2)
    assert verify_chain(JOB, relinked) == ChainBreak(JOB, 3, "stored data is not a valid event")


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"type": "completed"}, "stored type 'completed' is not the event's type 'failed'"),
        ({"attempt": 2}, "stored attempt 2 is not the event's attempt 1"),
        ({"attempt": True}, "stored attempt True is not the event's attempt 1"),
        (
            {"occurred_at": at(2) + timedelta(microseconds=1)},
            "stored occurred_at 2024-01-01T12:00:02.000001+00:00 is not the event's occurred_at "
            "2024-01-01T12:00:02+00:00",
        ),
        (
            {"occurred_at": at(2).replace(tzinfo=None)},
            "stored occurred_at datetime.datetime(2024, 1, 1, 12, 0, 2) is not the event's "
            "occurred_at 2024-01-01T12:00:02+00:00",
        ),
    ],
)
def test_a_query_field_that_disagrees_with_the_hashed_data_breaks_at_that_seq(
    change: dict[str, object], reason: str
) -> None:
    # These fields sit beside the hashed text (filters and indexes read them): the hash
    # still matches, so only comparing them with the data finds the edit.
    entries = chain()
    entries[2] = replace(entries[2], **change)  # type: ignore[arg-type]
    assert verify_chain(JOB, entries) == ChainBreak(JOB, 3, reason)


def test_occurred_at_is_compared_at_the_stores_precision() -> None:
    event = f.failed(at=at(2) + timedelta(microseconds=123_456))
    [entry] = f.stored_chain([event], [at(3)])
    exact = entry.occurred_at
    assert exact.microsecond == 123_456
    assert verify_chain(JOB, [entry]) is None
    as_bson = replace(
        entry, occurred_at=exact.replace(microsecond=123_000), occurred_at_unit=MILLISECOND
    )
    assert verify_chain(JOB, [as_bson]) is None
    # Cut to milliseconds is not what a microsecond store holds, nor the next millisecond.
    assert verify_chain(JOB, [replace(as_bson, occurred_at_unit=entry.occurred_at_unit)])
    assert verify_chain(JOB, [replace(as_bson, occurred_at=exact.replace(microsecond=124_000))])


def test_at_unit_cuts_toward_the_past_in_utc() -> None:
    moment = datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=timezone(timedelta(hours=2)))
    assert at_unit(moment, MILLISECOND) == datetime(1969, 12, 31, 21, 59, 59, 999_000, tzinfo=UTC)
    assert at_unit(moment, MILLISECOND).tzinfo is UTC


def test_a_flaw_the_store_found_breaks_at_that_seq_before_anything_else() -> None:
    entries = chain()
    entries[1] = replace(entries[1], flaw="stored entry has fields the log never writes: x")
    assert verify_chain(JOB, entries) == ChainBreak(
        JOB, 2, "stored entry has fields the log never writes: x"
    )


def test_link_hash_covers_every_input() -> None:
    args = (JOB, 1, T0, GENESIS_HASH, '{"a":1}')
    base = link_hash(*args)
    assert len(base) == 64
    assert int(base, 16) >= 0
    assert base == link_hash(*args)
    variants = [
        ("job-2", 1, T0, GENESIS_HASH, '{"a":1}'),
        (JOB, 2, T0, GENESIS_HASH, '{"a":1}'),
        (JOB, 1, T0 + timedelta(microseconds=1), GENESIS_HASH, '{"a":1}'),
        (JOB, 1, T0, "1" * 64, '{"a":1}'),
        (JOB, 1, T0, GENESIS_HASH, '{"a":2}'),
    ]
    assert len({base, *(link_hash(*v) for v in variants)}) == 6


def test_link_hash_is_unambiguous_across_field_boundaries() -> None:
    assert link_hash("a", 1, T0, GENESIS_HASH, "bc") != link_hash("ab", 1, T0, GENESIS_HASH, "c")


def test_link_hash_depends_on_the_instant_not_its_offset() -> None:
    elsewhere = T0.astimezone(timezone(timedelta(hours=-7)))
    assert link_hash(JOB, 1, T0, GENESIS_HASH, "x") == link_hash(
        JOB, 1, elsewhere, GENESIS_HASH, "x"
    )


def test_a_recorded_event_knows_its_job() -> None:
    event = f.completed("job-9")
    assert RecordedEvent(1, datetime(2024, 1, 1, tzinfo=UTC), "", "", event).job_id == "job-9"


STORED_FIELDS = (
    *("data", "hash", "prev_hash", "recorded_at", "seq"),
    *("type", "attempt", "occurred_at", "event_id", "job_id"),
)


@settings(max_examples=100, deadline=None)
@given(
    events=st.lists(f.any_events(), min_size=1, max_size=8),
    data=st.data(),
)
def test_any_change_to_any_entry_is_found_at_that_seq(
    events: list[JobEvent], data: st.DataObject
) -> None:
    entries = f.stored_chain(events)
    assert verify_chain(JOB, entries) is None
    index = data.draw(st.integers(min_value=0, max_value=len(entries) - 1))
    field = data.draw(st.sampled_from(STORED_FIELDS))
    entry = entries[index]
    changed = {
        "data": lambda: with_data(entry, source="mallory"),
        "hash": lambda: replace(entry, hash=link_hash("x", 0, T0, "", "")),
        "prev_hash": lambda: replace(entry, prev_hash="e" * 64),
        "recorded_at": lambda: replace(entry, recorded_at=entry.recorded_at + timedelta(seconds=1)),
        "seq": lambda: replace(entry, seq=entry.seq + 1),
        "type": lambda: replace(
            entry, type="dead_lettered" if entry.type != "dead_lettered" else "x"
        ),
        "attempt": lambda: replace(entry, attempt=entry.attempt + 1),
        "occurred_at": lambda: replace(entry, occurred_at=entry.occurred_at - timedelta(seconds=1)),
        "event_id": lambda: replace(entry, event_id=str(f.new_id())),
        "job_id": lambda: replace(entry, job_id="job-other"),
    }[field]()
    entries[index] = changed
    found = verify_chain(JOB, entries)
    assert found is not None
    assert found.seq == changed.seq

"""The log adapters' cache of decoded entries: a hit is exactly a fresh decode, and it is bounded."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime

from app.adapters.log_entries import DecodedEntries, chain_entry, decode_entry
from app.bench.workload import lifecycle_events
from app.domain.chain import StoredEvent

AT = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)


def entries(count: int) -> list[StoredEvent]:
    return [chain_entry(event, AT) for event in lifecycle_events(count, run="dc")]


def as_read(entry: StoredEvent) -> StoredEvent:
    """The same entry as a new read hands it over: equal, but new objects."""
    return replace(entry, data="".join(list(entry.data)))


def test_a_hit_is_what_decoding_again_gives() -> None:
    cache = DecodedEntries(size=10)
    [entry] = entries(1)
    first = cache.decode(entry)
    again = cache.decode(as_read(entry))
    assert again is first, "decoded once"
    assert again == decode_entry(entry)


def test_an_entry_changed_in_the_store_is_decoded_afresh() -> None:
    cache = DecodedEntries(size=10)
    [entry] = entries(1)
    cache.decode(entry)
    data = json.loads(entry.data)
    data["source"] = "tampered"
    changed = replace(entry, data=json.dumps(data, sort_keys=True, separators=(",", ":")))
    assert cache.decode(changed).event.source == "tampered"
    moved = replace(entry, seq=entry.seq + 1)
    assert cache.decode(moved).seq == entry.seq + 1


def test_it_keeps_the_most_recently_used_entries_only() -> None:
    cache = DecodedEntries(size=3)
    a, b, c, d = entries(4)
    kept = {e: cache.decode(e) for e in (a, b, c)}
    cache.decode(a)  # a is used again: b is now the least recently used
    cache.decode(d)
    assert len(cache) == 3
    assert cache.decode(a) is kept[a] and cache.decode(c) is kept[c]
    assert cache.decode(b) is not kept[b], "b was dropped and decoded again"
    assert len(cache) == 3

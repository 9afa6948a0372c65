"""The daily Merkle anchor: tree shape (RFC 6962), streaming equivalence, day digests."""

from __future__ import annotations

import hashlib
from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.domain.merkle import (
    EMPTY_ROOT,
    Anchor,
    DayDigester,
    EntryRef,
    Leaf,
    MerkleAccumulator,
    anchor_changes,
    day_bounds,
    leaf_digest,
    merkle_root,
    node_digest,
)

DAY = date(2026, 11, 26)
START = datetime(2026, 11, 26, tzinfo=UTC)
COMPUTED = datetime(2026, 11, 27, 1, tzinfo=UTC)


def _h(n: int) -> str:
    return hashlib.sha256(str(n).encode()).hexdigest()


def _reference(leaves: list[str]) -> bytes:
    """RFC 6962 §2.1 as written: split at the largest power of two smaller than n."""
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0].encode()).digest()
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + _reference(leaves[:k]) + _reference(leaves[k:])).digest()


def test_the_empty_tree_is_the_hash_of_nothing() -> None:
    assert merkle_root([]) == EMPTY_ROOT == hashlib.sha256(b"").hexdigest()
    assert MerkleAccumulator().root() == EMPTY_ROOT


def test_leaves_and_nodes_are_domain_separated() -> None:
    assert leaf_digest("ab") == hashlib.sha256(b"\x00ab").digest()
    left, right = b"L" * 32, b"R" * 32
    assert node_digest(left, right) == hashlib.sha256(b"\x01" + left + right).digest()
    # An inner node's bytes, offered as a leaf, never give the same digest.
    assert leaf_digest((left + right).hex()) != node_digest(left, right)


def test_one_leaf_is_its_leaf_digest() -> None:
    assert merkle_root(["abc"]) == leaf_digest("abc").hex()


@pytest.mark.parametrize("n", [*range(1, 34), 64, 100, 255, 256, 257])
def test_streaming_root_equals_the_recursive_definition(n: int) -> None:
    leaves = [_h(i) for i in range(n)]
    assert merkle_root(leaves) == _reference(leaves).hex()


@given(st.lists(st.text(max_size=8), min_size=1, max_size=70))
def test_streaming_root_equals_the_recursive_definition_for_any_leaves(leaves: list[str]) -> None:
    assert merkle_root(leaves) == _reference(leaves).hex()


@given(st.lists(st.text(max_size=8), min_size=2, max_size=30), st.data())
def test_any_change_of_content_or_order_changes_the_root(
    leaves: list[str], data: st.DataObject
) -> None:
    i = data.draw(st.integers(0, len(leaves) - 1))
    altered = [*leaves[:i], leaves[i] + "x", *leaves[i + 1 :]]
    assert merkle_root(altered) != merkle_root(leaves)
    assert merkle_root(leaves[:i] + leaves[i + 1 :]) != merkle_root(leaves)
    j = data.draw(st.integers(0, len(leaves) - 1))
    swapped = list(leaves)
    swapped[i], swapped[j] = swapped[j], swapped[i]
    assert (merkle_root(swapped) == merkle_root(leaves)) == (swapped == leaves)


def test_accumulator_counts_and_can_be_read_midway() -> None:
    tree = MerkleAccumulator()
    roots = []
    for i in range(5):
        tree.add(_h(i))
        roots.append(tree.root())
    assert tree.count == 5
    assert roots == [merkle_root([_h(i) for i in range(n)]) for n in range(1, 6)]


def test_day_bounds_are_a_utc_day() -> None:
    assert day_bounds(DAY) == (START, START + timedelta(days=1))


def _leaf(seconds: float, job: str = "job-1", seq: int = 1) -> Leaf:
    return Leaf(START + timedelta(seconds=seconds), job, seq, _h(int(seconds * 10) + seq))


def test_a_day_digest_roots_its_leaves_in_order_and_names_first_and_last() -> None:
    leaves = [_leaf(0, "a", 1), _leaf(0, "b", 1), _leaf(0, "b", 2), _leaf(86399.999, "a", 2)]
    digester = DayDigester(DAY)
    for leaf in leaves:
        digester.add(leaf)
    anchor = digester.anchor(COMPUTED)
    assert anchor == Anchor(
        day=DAY,
        root=merkle_root(leaf.hash for leaf in leaves),
        count=4,
        first=EntryRef("a", 1),
        last=EntryRef("a", 2),
        computed_at=COMPUTED,
    )


def test_an_empty_day_has_the_empty_root_and_no_first_or_last() -> None:
    anchor = DayDigester(DAY).anchor(COMPUTED)
    assert (anchor.root, anchor.count, anchor.first, anchor.last) == (EMPTY_ROOT, 0, None, None)


@pytest.mark.parametrize("seconds", [-0.001, 86400])
def test_a_leaf_outside_the_day_is_refused(seconds: float) -> None:
    with pytest.raises(ValueError, match="was not recorded on 2026-11-26"):
        DayDigester(DAY).add(_leaf(seconds))


@pytest.mark.parametrize(
    "second", [_leaf(5, "a", 1), _leaf(10, "a", 1), _leaf(10, "a", 2), _leaf(10, "A", 9)]
)
def test_leaves_out_of_order_or_repeated_are_refused(second: Leaf) -> None:
    digester = DayDigester(DAY)
    digester.add(_leaf(10, "a", 2))
    with pytest.raises(ValueError, match="out of"):
        digester.add(second)


def _anchor(**changes: object) -> Anchor:
    base = {
        "day": DAY,
        "root": "r1",
        "count": 3,
        "first": EntryRef("a", 1),
        "last": EntryRef("b", 2),
        "computed_at": COMPUTED,
    }
    return Anchor(**(base | changes))  # type: ignore[arg-type]


def test_same_digest_ignores_only_when_it_was_computed() -> None:
    assert _anchor().same_digest(_anchor(computed_at=COMPUTED + timedelta(days=3)))
    for change in (
        {"day": DAY + timedelta(days=1)},
        {"root": "r2"},
        {"count": 4},
        {"first": None},
        {"last": EntryRef("b", 3)},
    ):
        assert not _anchor().same_digest(_anchor(**change))


def test_anchor_changes_say_what_differs() -> None:
    assert anchor_changes(_anchor(), _anchor(computed_at=COMPUTED + timedelta(hours=1))) == []
    assert anchor_changes(_anchor(), _anchor(root="r2", count=2, last=EntryRef("b", 1))) == [
        "root r1 anchored, r2 now",
        "3 entries anchored, 2 now (-1)",
        "the day's last entry was b seq 2, now b seq 1",
    ]
    assert anchor_changes(_anchor(), _anchor(first=None, count=4)) == [
        "3 entries anchored, 4 now (+1)",
        "the day's first entry was a seq 1, now none",
    ]

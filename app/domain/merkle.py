"""Daily Merkle anchors of the log: pure tree code over entry hashes, in one pass, O(log n) memory.

The tree has the shape of RFC 6962 (Certificate Transparency): a leaf is SHA-256(0x00 ‖ entry
hash), an inner node SHA-256(0x01 ‖ left ‖ right), the left subtree of n leaves holds the largest
power of two below n, and the empty tree's root is SHA-256 of nothing. The prefixes keep a leaf from
ever passing for an inner node. A day's leaves are the hashes of every entry recorded that UTC day,
ordered by (recorded_at, job_id, seq): the order is part of what the root proves.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").hexdigest()


def leaf_digest(entry_hash: str) -> bytes:
    """The tree leaf of one log entry, from the entry's hash text."""
    return hashlib.sha256(LEAF_PREFIX + entry_hash.encode()).digest()


def node_digest(left: bytes, right: bytes) -> bytes:
    """The inner node over two subtrees."""
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


class MerkleAccumulator:
    """Builds a root leaf by leaf, keeping one complete subtree per set bit of the leaf count."""

    def __init__(self) -> None:
        self._subtrees: list[tuple[int, bytes]] = []
        self.count = 0

    def add(self, entry_hash: str) -> None:
        """Append one leaf, merging equal-height subtrees as a binary counter carries."""
        height, node = 0, leaf_digest(entry_hash)
        while self._subtrees and self._subtrees[-1][0] == height:
            _, left = self._subtrees.pop()
            height, node = height + 1, node_digest(left, node)
        self._subtrees.append((height, node))
        self.count += 1

    def root(self) -> str:
        """The root (hex) of the leaves added so far; ``EMPTY_ROOT`` if none."""
        if not self._subtrees:
            return EMPTY_ROOT
        node = self._subtrees[-1][1]
        for _, left in reversed(self._subtrees[:-1]):
            node = node_digest(left, node)
        return node.hex()


def merkle_root(entry_hashes: Iterable[str]) -> str:
    """The root (hex) over entry hashes, in the order given."""
    accumulator = MerkleAccumulator()
    for entry_hash in entry_hashes:
        accumulator.add(entry_hash)
    return accumulator.root()


@dataclass(frozen=True, slots=True)
class Leaf:
    """What a day's tree needs of one log entry."""

    recorded_at: datetime
    job_id: str
    seq: int
    hash: str

    @property
    def order(self) -> tuple[datetime, str, int]:
        return (self.recorded_at, self.job_id, self.seq)


@dataclass(frozen=True, slots=True)
class EntryRef:
    """Names one log entry."""

    job_id: str
    seq: int

    def __str__(self) -> str:
        return f"{self.job_id} seq {self.seq}"


@dataclass(frozen=True, slots=True)
class Anchor:
    """The digest of one UTC day of the log, as stored (insert-only) and printed for auditors."""

    day: date
    root: str
    count: int
    first: EntryRef | None
    last: EntryRef | None
    computed_at: datetime

    def same_digest(self, other: Anchor) -> bool:
        """Whether both describe the same entries (``computed_at`` aside)."""
        return (self.day, self.root, self.count, self.first, self.last) == (
            other.day,
            other.root,
            other.count,
            other.first,
            other.last,
        )


def day_bounds(day: date) -> tuple[datetime, datetime]:
    """The instants [start, end) of a UTC day."""
    start = datetime.combine(day, time(), tzinfo=UTC)
    return start, start + timedelta(days=1)


class DayDigester:
    """Folds a day's leaves, given in (recorded_at, job_id, seq) order, into an ``Anchor``."""

    def __init__(self, day: date) -> None:
        self.day = day
        self._start, self._end = day_bounds(day)
        self._tree = MerkleAccumulator()
        self._first: Leaf | None = None
        self._last: Leaf | None = None

    def add(self, leaf: Leaf) -> None:
        """Add the next leaf; raises ValueError if it is outside the day or out of order."""
        if not self._start <= leaf.recorded_at < self._end:
            raise ValueError(f"entry {leaf.job_id} seq {leaf.seq} was not recorded on {self.day}")
        if self._last is not None and leaf.order <= self._last.order:
            raise ValueError(
                f"entry {leaf.job_id} seq {leaf.seq} is out of (recorded_at, job_id, seq) order"
            )
        self._tree.add(leaf.hash)
        self._first = self._first or leaf
        self._last = leaf

    def anchor(self, computed_at: datetime) -> Anchor:
        """The day's anchor over the leaves added so far."""
        return Anchor(
            day=self.day,
            root=self._tree.root(),
            count=self._tree.count,
            first=_ref(self._first),
            last=_ref(self._last),
            computed_at=computed_at,
        )


def _ref(leaf: Leaf | None) -> EntryRef | None:
    return None if leaf is None else EntryRef(leaf.job_id, leaf.seq)


def anchor_changes(anchored: Anchor, current: Anchor) -> list[str]:
    """What differs between a stored anchor and the same day recomputed now (empty if nothing)."""
    changes: list[str] = []
    if anchored.root != current.root:
        changes.append(f"root {anchored.root} anchored, {current.root} now")
    if anchored.count != current.count:
        delta = current.count - anchored.count
        changes.append(f"{anchored.count} entries anchored, {current.count} now ({delta:+d})")
    for name, then, now in (
        ("first", anchored.first, current.first),
        ("last", anchored.last, current.last),
    ):
        if then != now:
            changes.append(f"the day's {name} entry was {_named(then)}, now {_named(now)}")
    return changes


def _named(ref: EntryRef | None) -> str:
    return "none" if ref is None else str(ref)

"""Where daily anchors are kept, next to the log they digest, and the log read by recording time.

MongoDB: an insert-only ``anchors`` collection in the log's database, unique on ``day``. SQL: an
insert-only table ``jobtrail_anchors`` (primary key ``day``), created if missing by
``ensure_schema`` from ``anchor_metadata``. A day is never stored twice: ``add`` hands back the
anchor already stored instead. Both also stream the log's entries by ``recorded_at`` through the
log's own time index, which the per-job ``EventLog`` port does not offer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, date, datetime
from typing import Any

from pymongo import ASCENDING, AsyncMongoClient, IndexModel
from pymongo.errors import DuplicateKeyError, PyMongoError
from sqlalchemy import (
    BigInteger,
    Column,
    Date,
    DateTime,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Row,
    String,
    Table,
    inspect,
    select,
)
from sqlalchemy.exc import ArgumentError, IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection

from app.adapters.log_entries import DEFAULT_PAGE_SIZE
from app.adapters.log_factory import MONGO_SCHEMES
from app.adapters.mongo_log import COLLECTION, DEFAULT_DATABASE, mongo_client
from app.adapters.sql_log import events_table
from app.adapters.sql_schema import make_engine
from app.domain.merkle import Anchor, EntryRef, Leaf
from app.ports import EventLog, LogUnavailable

Document = dict[str, Any]

ANCHORS_COLLECTION = "anchors"
ANCHOR_INDEXES = (IndexModel([("day", ASCENDING)], name="day_unique", unique=True),)

# Byte order ("C") on PostgreSQL, as in the log's own table.
_JobId = String(200).with_variant(String(200, collation="C"), "postgresql")

anchor_metadata = MetaData()

anchors_table = Table(
    "jobtrail_anchors",
    anchor_metadata,
    Column("day", Date, nullable=False),
    Column("root", String(64), nullable=False),
    Column("entry_count", BigInteger, nullable=False),
    Column("first_job_id", _JobId, nullable=True),
    Column("first_seq", Integer, nullable=True),
    Column("last_job_id", _JobId, nullable=True),
    Column("last_seq", Integer, nullable=True),
    Column("computed_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("day", name="pk_jobtrail_anchors"),
)


def _fields(anchor: Anchor) -> Document:
    """An anchor as flat fields, the same in a MongoDB document and a SQL row."""
    return {
        "root": anchor.root,
        "entry_count": anchor.count,
        "first_job_id": anchor.first.job_id if anchor.first else None,
        "first_seq": anchor.first.seq if anchor.first else None,
        "last_job_id": anchor.last.job_id if anchor.last else None,
        "last_seq": anchor.last.seq if anchor.last else None,
        "computed_at": anchor.computed_at.astimezone(UTC),
    }


def _anchor(day: date, fields: Mapping[Any, Any]) -> Anchor:
    first, last = fields["first_job_id"], fields["last_job_id"]
    return Anchor(
        day=day,
        root=fields["root"],
        count=int(fields["entry_count"]),
        first=None if first is None else EntryRef(first, int(fields["first_seq"])),
        last=None if last is None else EntryRef(last, int(fields["last_seq"])),
        computed_at=_aware(fields["computed_at"]),
    )


def _aware(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes; every stored instant is UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


PageAfter = Callable[[datetime, bool, datetime], Awaitable[list[Leaf]]]
"""Up to a page of entries recorded after (or from, if inclusive) an instant and before another,
in ``recorded_at`` order (ties in any order)."""
AllAt = Callable[[datetime], Awaitable[list[Leaf]]]
"""Every entry recorded at exactly an instant."""


async def by_recording_time(
    page_after: PageAfter, all_at: AllAt, since: datetime, until: datetime, page_size: int
) -> AsyncIterator[Leaf]:
    """Entries with since <= recorded_at < until in (recorded_at, job_id, seq) order.

    Pages are read in ``recorded_at`` order only, which the time index serves directly (ordering
    by (recorded_at, job_id, seq) in the database would sort the rest of the range for every
    page). Entries recorded at the same instant (one batch) are ordered here: the last instant of
    a full page may be cut, so it is read whole before moving past it.
    """
    after, inclusive = since.astimezone(UTC), True
    while True:
        page = await page_after(after, inclusive, until)
        if len(page) < page_size:
            for leaf in sorted(page, key=_order):
                yield leaf
            return
        last = page[-1].recorded_at
        head = [leaf for leaf in page if leaf.recorded_at < last]
        for leaf in sorted(head + await all_at(last), key=_order):
            yield leaf
        after, inclusive = last, False


def _order(leaf: Leaf) -> tuple[datetime, str, int]:
    return leaf.order


@contextmanager
def _mongo_errors(action: str) -> Iterator[None]:
    try:
        yield
    except (PyMongoError, OSError) as exc:
        raise LogUnavailable(f"MongoDB anchors: {action} failed: {exc}") from exc


class MongoAnchorStore:
    """Anchors in the ``anchors`` collection of the log's MongoDB database."""

    def __init__(
        self,
        url: str,
        *,
        database: str | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
        server_selection_timeout_ms: int | None = None,
    ) -> None:
        # The log's client options: its durable write concern, and the same timeouts.
        self._client: AsyncMongoClient[Document] = mongo_client(url, server_selection_timeout_ms)
        db = self._client.get_default_database(DEFAULT_DATABASE)
        if database is not None:
            db = self._client.get_database(database)
        self._anchors = db.get_collection(ANCHORS_COLLECTION)
        self._events = db.get_collection(COLLECTION)
        self._page_size = page_size

    async def ensure_schema(self) -> None:
        with _mongo_errors("creating indexes"):
            await self._anchors.create_indexes(list(ANCHOR_INDEXES))

    async def add(self, anchor: Anchor) -> Anchor | None:
        with _mongo_errors("insert"):
            try:
                await self._anchors.insert_one({"day": anchor.day.isoformat(), **_fields(anchor)})
            except DuplicateKeyError:
                stored = await self._anchors.find_one({"day": anchor.day.isoformat()})
                assert stored is not None, "a unique day key fired, so the day is stored"
                return _anchor(anchor.day, stored)
        return None

    async def list_anchors(self, since: date | None = None) -> list[Anchor]:
        query: Document = {} if since is None else {"day": {"$gte": since.isoformat()}}
        with _mongo_errors("read"):
            docs = await self._anchors.find(query).sort("day", ASCENDING).to_list()
        return [_anchor(date.fromisoformat(doc["day"]), doc) for doc in docs]

    def scan_recorded(self, since: datetime, until: datetime) -> AsyncIterator[Leaf]:
        return by_recording_time(self._after, self._at, since, until, self._page_size)

    async def _after(self, after: datetime, inclusive: bool, until: datetime) -> list[Leaf]:
        window = {"$gte" if inclusive else "$gt": after, "$lt": until.astimezone(UTC)}
        return await self._find({"recorded_at": window}, self._page_size)

    async def _at(self, at: datetime) -> list[Leaf]:
        return await self._find({"recorded_at": at}, 0)

    async def _find(self, query: Document, limit: int) -> list[Leaf]:
        # Sorted on the recorded_at index alone: a compound sort would sort the whole range.
        fields = {"_id": 0, "recorded_at": 1, "job_id": 1, "seq": 1, "hash": 1}
        with _mongo_errors("scan"):
            cursor = self._events.find(query, fields).sort("recorded_at", ASCENDING).limit(limit)
            docs = await cursor.to_list()
        return [
            Leaf(doc["recorded_at"].astimezone(UTC), doc["job_id"], doc["seq"], doc["hash"])
            for doc in docs
        ]

    async def close(self) -> None:
        with _mongo_errors("close"):
            await self._client.close()


_c = events_table.c
_a = anchors_table.c
_LEAVES = select(_c.recorded_at, _c.job_id, _c.seq, _c.hash)


def _leaves(rows: list[Row[Any]]) -> list[Leaf]:
    return [Leaf(_aware(row.recorded_at), row.job_id, row.seq, row.hash) for row in rows]


def _sql_unavailable(action: str, exc: BaseException) -> LogUnavailable:
    return LogUnavailable(f"SQL anchors: {action} failed: {type(exc).__name__}: {exc}")


class SqlAnchorStore:
    """Anchors in the ``jobtrail_anchors`` table of the SQL log's database."""

    def __init__(self, url: str, *, page_size: int = DEFAULT_PAGE_SIZE) -> None:
        try:
            self._engine = make_engine(url)
        except ArgumentError as exc:
            raise ValueError(f"invalid SQLAlchemy URL: {exc}") from exc
        self._page_size = page_size

    async def ensure_schema(self) -> None:
        try:
            async with self._engine.begin() as conn:
                await conn.run_sync(anchor_metadata.create_all, checkfirst=True)
        except (SQLAlchemyError, OSError) as exc:
            raise _sql_unavailable("creating the table", exc) from exc

    async def add(self, anchor: Anchor) -> Anchor | None:
        row = {"day": anchor.day, **_fields(anchor)}
        try:
            async with self._engine.begin() as conn:
                await conn.execute(anchors_table.insert().values(row))
        except IntegrityError:
            stored = await self._read(select(anchors_table).where(_a.day == anchor.day))
            assert stored, "the day's primary key fired, so the day is stored"
            return _anchor(stored[0].day, stored[0]._mapping)
        except (SQLAlchemyError, OSError) as exc:
            raise _sql_unavailable("insert", exc) from exc
        return None

    async def list_anchors(self, since: date | None = None) -> list[Anchor]:
        if not await self._table_exists():
            return []  # nothing anchored yet; reading needs no right to create the table
        query = select(anchors_table).order_by(_a.day)
        if since is not None:
            query = query.where(_a.day >= since)
        return [_anchor(row.day, row._mapping) for row in await self._read(query)]

    def scan_recorded(self, since: datetime, until: datetime) -> AsyncIterator[Leaf]:
        return by_recording_time(self._after, self._at, since, until, self._page_size)

    async def _after(self, after: datetime, inclusive: bool, until: datetime) -> list[Leaf]:
        start = _c.recorded_at >= after if inclusive else _c.recorded_at > after
        query = _LEAVES.where(start, _c.recorded_at < until.astimezone(UTC))
        return _leaves(await self._read(query.order_by(_c.recorded_at).limit(self._page_size)))

    async def _at(self, at: datetime) -> list[Leaf]:
        return _leaves(await self._read(_LEAVES.where(_c.recorded_at == at)))

    async def _table_exists(self) -> bool:
        try:
            async with self._engine.connect() as conn:
                return await conn.run_sync(lambda sync: inspect(sync).has_table(anchors_table.name))
        except (SQLAlchemyError, OSError) as exc:
            raise _sql_unavailable("read", exc) from exc

    async def _read(self, query: Any) -> list[Row[Any]]:
        try:
            async with self._engine.connect() as conn:
                return await _all(conn, query)
        except (SQLAlchemyError, OSError) as exc:
            raise _sql_unavailable("read", exc) from exc

    async def close(self) -> None:
        try:
            await self._engine.dispose()
        except (SQLAlchemyError, OSError) as exc:
            raise _sql_unavailable("close", exc) from exc


async def _all(conn: AsyncConnection, query: Any) -> list[Row[Any]]:
    return list((await conn.execute(query)).all())


class InMemoryAnchorStore:
    """Anchors in process memory over any ``EventLog`` (sorting its scan): for service tests."""

    def __init__(self, log: EventLog) -> None:
        self._log = log
        self._anchors: dict[date, Anchor] = {}

    async def ensure_schema(self) -> None:
        return None

    async def add(self, anchor: Anchor) -> Anchor | None:
        stored = self._anchors.setdefault(anchor.day, anchor)
        return None if stored is anchor else stored

    async def list_anchors(self, since: date | None = None) -> list[Anchor]:
        return [a for day, a in sorted(self._anchors.items()) if since is None or day >= since]

    async def scan_recorded(self, since: datetime, until: datetime) -> AsyncIterator[Leaf]:
        leaves = [
            Leaf(entry.recorded_at, entry.job_id, entry.seq, entry.hash)
            async for entry in self._log.scan_raw()
            if since <= entry.recorded_at < until
        ]
        for leaf in sorted(leaves, key=lambda leaf: leaf.order):
            yield leaf

    async def close(self) -> None:
        return None


AnchorBackend = MongoAnchorStore | SqlAnchorStore


def open_anchor_store(log_url: str) -> AnchorBackend:
    """The anchor store beside the log at ``log_url`` (the URL ``open_event_log`` takes)."""
    if log_url.partition("://")[0].lower() in MONGO_SCHEMES:
        return MongoAnchorStore(log_url)
    return SqlAnchorStore(log_url)

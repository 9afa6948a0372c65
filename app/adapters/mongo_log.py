"""The EventLog on MongoDB through PyMongo's async API.

One insert-only collection, ``events``, with unique indexes on ``event_id`` and on
(``job_id``, ``seq``). ``data`` holds the canonical JSON text exactly as hashed: a string, never a
sub-document, so no user value is read as an operator and BSON integer limits do not apply.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from bson.errors import InvalidDocument
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, IndexModel, uri_parser
from pymongo.errors import BulkWriteError, DuplicateKeyError, PyMongoError, WriteError

from app.adapters.log_entries import (
    DEFAULT_PAGE_SIZE,
    MAX_APPEND_TRIES,
    DecodedEntries,
    appended,
    chain_entry,
    conflict_pause,
    decode_entry,
    duplicate,
    entry_fields,
    raw_entry,
    truncate_ms,
)
from app.domain.chain import GENESIS_HASH, MILLISECOND, RecordedEvent, StoredEvent
from app.domain.events import JobEvent
from app.ports import AppendOutcome, LogUnavailable, WriteRefused

Document = dict[str, Any]

DEFAULT_DATABASE = "jobtrail"
DEFAULT_SERVER_SELECTION_TIMEOUT_MS = 5000
COLLECTION = "events"
DUPLICATE_KEY = 11000
INDEXES = (
    IndexModel([("event_id", ASCENDING)], name="event_id_unique", unique=True),
    IndexModel([("job_id", ASCENDING), ("seq", ASCENDING)], name="job_seq_unique", unique=True),
    IndexModel([("recorded_at", ASCENDING)], name="recorded_at"),
    IndexModel([("type", ASCENDING), ("recorded_at", ASCENDING)], name="type_recorded_at"),
)
_RAW = {
    "_id": 0,
    "job_id": 1,
    "seq": 1,
    "event_id": 1,
    "type": 1,
    "attempt": 1,
    "occurred_at": 1,
    "recorded_at": 1,
    "prev_hash": 1,
    "hash": 1,
    "data": 1,
}
_WHOLE: Document | None = None
"""Raw reads (what verify checks) fetch whole documents: a key the log never writes is a flaw."""
_KEYED: Document = {"job_id": {"$type": "string"}, "seq": {"$type": ["int", "long"]}}
"""Entries whose paging key has the types the log writes (anything else was edited in)."""
_BY_JOB_SEQ = [("job_id", ASCENDING), ("seq", ASCENDING)]
_BY_TIME = [("recorded_at", ASCENDING), ("job_id", ASCENDING), ("seq", ASCENDING)]

_Planned = StoredEvent | AppendOutcome
"""One event of an ``append_many`` batch: the entry to insert, or its known duplicate outcome."""


@contextmanager
def _translated(action: str) -> Iterator[None]:
    """Turn every driver error into a port's error: none may cross the adapter.

    A document the server refuses (a write error other than a duplicate key: a collection
    validator, a limit) or the client cannot encode (``InvalidDocument``, ``DocumentTooLarge``)
    is ``WriteRefused``; everything else is ``LogUnavailable``, retried.
    """
    try:
        yield
    except WriteError as exc:
        if exc.code == DUPLICATE_KEY:
            raise LogUnavailable(f"MongoDB event log: {action} failed: {exc}") from exc
        raise WriteRefused(f"MongoDB refused {action}: {exc.code}: {_first_line(exc)}") from exc
    except InvalidDocument as exc:
        raise WriteRefused(f"MongoDB refused {action}: {_first_line(exc)}") from exc
    except (PyMongoError, OSError) as exc:
        raise LogUnavailable(f"MongoDB event log: {action} failed: {exc}") from exc


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:300]


def _stored(doc: Mapping[str, Any]) -> StoredEvent:
    """The entry a document holds; a document's keys and types are free, so check them all.

    ``_id`` is MongoDB's own key: nothing reads it or orders by it.
    """
    fields = dict(doc)
    fields.pop("_id", None)
    for name in ("occurred_at", "recorded_at"):
        if isinstance(fields.get(name), datetime):
            fields[name] = fields[name].astimezone(UTC)
    return raw_entry(fields, occurred_at_unit=MILLISECOND)


class MongoEventLog:
    """EventLog on MongoDB; the database comes from the URL path (default ``jobtrail``).

    An outage raises ``LogUnavailable`` after the server selection timeout: the argument, else
    the URL's ``serverSelectionTimeoutMS``, else 5 s.
    """

    def __init__(
        self,
        url: str,
        *,
        database: str | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
        server_selection_timeout_ms: int | None = None,
    ) -> None:
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        self._client = mongo_client(url, server_selection_timeout_ms)
        db = self._client.get_default_database(DEFAULT_DATABASE)
        if database is not None:
            db = self._client.get_database(database)
        self._events = db.get_collection(COLLECTION)
        self._page_size = page_size
        self._decoded = DecodedEntries()

    async def ensure_schema(self) -> None:
        with _translated("creating indexes"):
            await self._events.create_indexes(list(INDEXES))

    async def append(self, event: JobEvent, recorded_at: datetime) -> AppendOutcome:
        at = truncate_ms(recorded_at)
        for attempt in range(MAX_APPEND_TRIES):
            with _translated("append"):
                outcome = await self._try_append(event, at)
            if outcome is not None:
                return outcome
            await conflict_pause(attempt)
        raise LogUnavailable(
            f"MongoDB event log: job {event.job_id!r} still conflicting after "
            f"{MAX_APPEND_TRIES} tries"
        )

    async def _try_append(self, event: JobEvent, at: datetime) -> AppendOutcome | None:
        """One optimistic attempt; None when a concurrent writer took the seq first."""
        tip = await self._events.find_one(
            {"job_id": event.job_id}, {"_id": 0, "seq": 1, "hash": 1}, sort=[("seq", DESCENDING)]
        )
        entry = chain_entry(event, at) if tip is None else chain_entry(event, at, *_tip(tip))
        try:
            await self._events.insert_one(entry_fields(entry))
        except DuplicateKeyError:
            # Either index may have fired; the event_id tells which without parsing messages.
            return await self._stored_outcome(entry.event_id)
        return appended(entry, event)

    async def _stored_outcome(self, event_id: str) -> AppendOutcome | None:
        doc = await self._events.find_one({"event_id": event_id}, {"_id": 0, "job_id": 1, "seq": 1})
        return None if doc is None else duplicate(event_id, doc["job_id"], doc["seq"])

    async def append_many(
        self, events: Sequence[JobEvent], recorded_at: datetime
    ) -> list[AppendOutcome]:
        """One ordered ``insert_many``; from the first conflict on, each event is appended alone.

        The insert is ordered so it stops at the first error: an entry after a failed one is
        never stored with a seq (and prev_hash) that assumed the failed one.
        """
        at = truncate_ms(recorded_at)
        if not events:
            return []
        with _translated("append"):
            plan = await self._plan(events, at)
            stop = await self._insert_until_conflict(plan)
        done = [
            item if isinstance(item, AppendOutcome) else appended(item, event)
            for item, event in zip(plan[:stop], events, strict=False)
        ]
        return done + [await self.append(event, at) for event in events[stop:]]

    async def _plan(self, events: Sequence[JobEvent], at: datetime) -> list[_Planned]:
        ids = [str(event.event_id) for event in events]
        known = {
            doc["event_id"]: (doc["job_id"], doc["seq"])
            async for doc in self._events.find(
                {"event_id": {"$in": ids}}, {"_id": 0, "event_id": 1, "job_id": 1, "seq": 1}
            )
        }
        tips = await self._tips({event.job_id for event in events})
        plan: list[_Planned] = []
        for event, event_id in zip(events, ids, strict=True):
            if event_id in known:
                plan.append(duplicate(event_id, *known[event_id]))
                continue
            entry = chain_entry(event, at, *tips.get(event.job_id, (0, GENESIS_HASH)))
            tips[event.job_id] = (entry.seq, entry.hash)
            known[event_id] = (entry.job_id, entry.seq)
            plan.append(entry)
        return plan

    async def _tips(self, job_ids: set[str]) -> dict[str, tuple[int, str]]:
        """The last (seq, hash) of each of ``job_ids`` that has entries, in one round trip."""
        cursor = await self._events.aggregate(
            [
                {"$match": {"job_id": {"$in": sorted(job_ids)}}},
                {"$sort": {"job_id": DESCENDING, "seq": DESCENDING}},  # the index, reversed
                {
                    "$group": {
                        "_id": "$job_id",
                        "seq": {"$first": "$seq"},
                        "hash": {"$first": "$hash"},
                    }
                },
            ]
        )
        return {doc["_id"]: _tip(doc) async for doc in cursor}

    async def _insert_until_conflict(self, plan: list[_Planned]) -> int:
        """Insert the planned entries in order; the batch position of the first failure, or len."""
        positions: list[int] = []
        docs: list[Document] = []
        for position, item in enumerate(plan):
            if isinstance(item, StoredEvent):
                positions.append(position)
                docs.append(entry_fields(item))
        if not docs:
            return len(plan)
        try:
            await self._events.insert_many(docs, ordered=True)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors") or []
            if not errors:
                raise
            return positions[int(errors[0]["index"])]
        return len(plan)

    async def read_job(self, job_id: str, *, until: datetime | None = None) -> list[RecordedEvent]:
        query: Document = {"job_id": job_id}
        if until is not None:
            query["recorded_at"] = {"$lte": until.astimezone(UTC)}
        return [decode_entry(entry) for entry in await self._find(query)]

    async def read_jobs(self, job_ids: Sequence[str]) -> dict[str, list[RecordedEvent]]:
        found: dict[str, list[RecordedEvent]] = {job_id: [] for job_id in job_ids}
        if found:
            for entry in await self._find({"job_id": {"$in": list(found)}}):
                found[entry.job_id].append(self._decoded.decode(entry))
        return found

    async def read_jobs_from(self, starts: Mapping[str, int]) -> dict[str, list[RecordedEvent]]:
        found: dict[str, list[RecordedEvent]] = {job_id: [] for job_id in starts}
        if found:
            wanted = [{"job_id": job_id, "seq": {"$gte": seq}} for job_id, seq in starts.items()]
            for entry in await self._find({"$or": wanted}):
                found[entry.job_id].append(self._decoded.decode(entry))
        return found

    async def read_job_raw(self, job_id: str) -> list[StoredEvent]:
        return await self._find({"job_id": job_id}, projection=_WHOLE)

    async def _find(
        self,
        query: Document,
        limit: int = 0,
        order: list[tuple[str, int]] | None = None,
        projection: Document | None = _RAW,
    ) -> list[StoredEvent]:
        with _translated("read"):
            cursor = self._events.find(query, projection).sort(order or _BY_JOB_SEQ).limit(limit)
            docs = await cursor.to_list()
        return [_stored(doc) for doc in docs]

    async def scan_raw(self, after_job: str | None = None) -> AsyncIterator[StoredEvent]:
        """Every entry by (job_id, seq) (after job ``after_job``, if named), then any whose job_id
        or seq is of another type: keyset paging compares within one BSON type, so such an
        entry would end or skip the scan."""
        query: Document = (
            _KEYED if after_job is None else {"$and": [_KEYED, {"job_id": {"$gt": after_job}}]}
        )
        while page := await self._find(query, self._page_size, projection=_WHOLE):
            for entry in page:
                yield entry
            last = page[-1]
            query = {
                "$and": [
                    _KEYED,
                    {
                        "$or": [
                            {"job_id": {"$gt": last.job_id}},
                            {"job_id": last.job_id, "seq": {"$gt": last.seq}},
                        ]
                    },
                ]
            }
        for entry in await self._find({"$nor": [_KEYED]}, projection=_WHOLE):
            yield entry

    async def scan(self) -> AsyncIterator[RecordedEvent]:
        async for entry in self.scan_raw():
            yield decode_entry(entry)

    async def scan_range(
        self, since: datetime | None, until: datetime | None
    ) -> AsyncIterator[RecordedEvent]:
        window: Document = {}
        if since is not None:
            window["$gte"] = since.astimezone(UTC)
        if until is not None:
            window["$lt"] = until.astimezone(UTC)
        base: Document = {"recorded_at": window} if window else {}
        query = base
        while page := await self._find(query, self._page_size, _BY_TIME):
            for entry in page:
                yield decode_entry(entry)
            last = page[-1]
            query = {
                "$and": [
                    base,
                    {
                        "$or": [
                            {"recorded_at": {"$gt": last.recorded_at}},
                            {"recorded_at": last.recorded_at, "job_id": {"$gt": last.job_id}},
                            {
                                "recorded_at": last.recorded_at,
                                "job_id": last.job_id,
                                "seq": {"$gt": last.seq},
                            },
                        ]
                    },
                ]
            }

    async def count(self) -> int:
        with _translated("count"):
            return int(await self._events.count_documents({}))

    async def close(self) -> None:
        with _translated("close"):
            await self._client.close()


DURABLE_WRITES: dict[str, Any] = {"w": "majority", "journal": True}
"""The write concern unless the URL names its own: an event is acknowledged to RabbitMQ once
written, so the write must be on a majority of the replica set and in its journal, or a failover
(or a crash) can roll back an event the broker has already forgotten."""


def mongo_client(url: str, server_selection_timeout_ms: int | None) -> AsyncMongoClient[Document]:
    """A client that connects (and resolves ``mongodb+srv``) on first use, not here.

    Every option the URL names wins; for the others: ``DURABLE_WRITES`` (``journal`` is left
    out when the URL asks for unacknowledged writes, ``w=0``) and a server selection timeout
    of ``server_selection_timeout_ms``, else the URL's, else 5 s.
    """
    named = _url_options(url)
    options: dict[str, Any] = {"tz_aware": True}
    options |= {name: value for name, value in DURABLE_WRITES.items() if name not in named}
    if named.get("w") == 0:
        options.pop("journal", None)
    if server_selection_timeout_ms is not None:
        options["serverSelectionTimeoutMS"] = server_selection_timeout_ms
    elif "serverSelectionTimeoutMS" not in named:
        options["serverSelectionTimeoutMS"] = DEFAULT_SERVER_SELECTION_TIMEOUT_MS
    try:
        return AsyncMongoClient(url, **options)
    except PyMongoError as exc:
        raise ValueError(f"invalid MongoDB URL: {exc}") from exc


def _url_options(url: str) -> Mapping[str, Any]:
    """The options the URL's query names, parsed as PyMongo does (names are case-insensitive);
    nothing is resolved, so a ``mongodb+srv`` URL stays lazy."""
    try:
        return uri_parser.split_options(urlsplit(url).query) if urlsplit(url).query else {}
    except (PyMongoError, ValueError) as exc:
        raise ValueError(f"invalid MongoDB URL: {exc}") from exc


def _tip(doc: Mapping[str, Any]) -> tuple[int, str]:
    return int(doc["seq"]), str(doc["hash"])

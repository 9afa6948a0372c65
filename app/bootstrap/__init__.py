"""The composition root: Settings → adapters → services. Nothing here runs at import time.

Entrypoints get adapters only from here (import-linter holds it). The package's other modules
are loaded by the commands that need them: ``worker`` (the FastStream app), ``metrics``
(Prometheus), ``hosting`` (the API's socket), ``formats`` (export writers and report renderers)
and ``management`` (RabbitMQ's management API).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from dataclasses import dataclass, field
from importlib import resources

from app.adapters.anchor_store import open_anchor_store
from app.adapters.clock import SystemClock
from app.adapters.log_factory import open_event_log
from app.adapters.preflight import Check, check_broker, check_mongo, check_sql
from app.adapters.rabbit import RabbitPublisher
from app.adapters.rabbit_ring import RabbitRing
from app.adapters.sql_barriers import SqlBarrierStore
from app.adapters.sql_members import SqlMembership
from app.adapters.sql_queries import SqlJobQueries
from app.adapters.sql_rebuild import PREVIOUS, REBUILT_TABLES, SqlRebuildTables
from app.adapters.sql_schema import migrate
from app.adapters.sql_store import SqlProjectionStore
from app.bootstrap.routing import build_router
from app.domain.policy import Policy
from app.ports import (
    AnchorBackend,
    Clock,
    EventLog,
    JobQueries,
    Membership,
    ProjectionStore,
    RebuildTarget,
)
from app.services.batcher import Batcher
from app.services.health import Health
from app.services.ingest import Ingestor
from app.services.partitions import PartitionCoordinator
from app.services.relay import OutboxRelay, TimerLoop
from app.services.ring import RingKeeper
from app.services.tracking import Tracker
from app.settings import Settings

log = logging.getLogger("jobtrail")


def load_policy(settings: Settings) -> Policy:
    """The policy file named in the settings, or the built-in one; raises ValueError if invalid."""
    if settings.policy_file is None:
        text = resources.files("app.domain").joinpath("default_policy.toml").read_text()
    else:
        try:
            text = settings.policy_file.read_text()
        except OSError as exc:
            raise ValueError(
                f"cannot read policy file {settings.policy_file}: {exc.strerror}"
            ) from exc
    return Policy.from_toml(text)


@dataclass
class Readers:
    """What read-only commands need: the log, the projections and the policy."""

    log: EventLog
    store: ProjectionStore
    policy: Policy

    async def close(self) -> None:
        await self.log.close()
        await self.store.close()


def open_readers(settings: Settings) -> Readers:
    return Readers(
        open_event_log(settings.log_url),
        SqlProjectionStore(settings.sql_url),
        load_policy(settings),
    )


def open_queries(settings: Settings) -> JobQueries:
    """The job queries over the projections (``jobs``, ``redrive``, the API); close when done."""
    return SqlJobQueries(settings.sql_url)


def system_clock() -> Clock:
    """The wall clock, timezone-aware UTC."""
    return SystemClock()


def open_anchors(settings: Settings) -> AnchorBackend:
    """The daily anchors beside the event log (MongoDB or SQL, as the log is)."""
    return open_anchor_store(settings.log_url)


def open_rebuild_target(settings: Settings) -> RebuildTarget:
    """Fresh projection tables beside the live ones, for ``rebuild``."""
    return SqlRebuildTables(settings.sql_url)


def previous_tables() -> list[str]:
    """The names a rebuild keeps the swapped-out projection tables under."""
    return [f"{table.name}{PREVIOUS}" for table in REBUILT_TABLES]


async def prepare_storage(settings: Settings) -> None:
    """Apply the SQL migrations (and the log's schema); safe to run on every start."""
    if settings.sql_url.startswith("sqlite"):
        _ensure_sqlite_dir(settings.sql_url)
    await migrate(settings.sql_url)
    if not settings.uses_mongo:
        _ensure_sqlite_dir(settings.log_url)
        if settings.log_url != settings.sql_url:
            await migrate(settings.log_url)


async def preflight(settings: Settings, *, migrated: bool, broker: bool = True) -> list[Check]:
    """Every precondition of the broker and the stores, checked concurrently, in a fixed order.

    ``migrated`` asks for the newest schema too (``doctor``, ``api``); ``serve`` migrates by
    itself. ``broker=False`` leaves the broker out (``api``: its reads need none, and its
    operator actions answer 503 while the broker is away).
    """
    for url in (settings.sql_url, settings.log_url):
        _ensure_sqlite_dir(url)
    log_check = (
        check_mongo(settings.log_url)
        if settings.uses_mongo
        else check_sql(settings.log_url, "event log", migrated=migrated)
    )
    store, event_log = await asyncio.gather(
        check_sql(settings.sql_url, "projections", migrated=migrated), log_check
    )
    return [*(await check_broker(settings.rabbit_url) if broker else []), store, event_log]


def _ensure_sqlite_dir(url: str) -> None:
    from pathlib import Path

    if url.startswith("sqlite") and ":///" in url:
        path = url.split(":///", 1)[1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)


@dataclass
class Tracking:
    """A running tracker's parts, wired together."""

    settings: Settings
    readers: Readers
    clock: Clock
    publisher: RabbitPublisher
    health: Health
    tracker: Tracker
    batcher: Batcher
    ingestor: Ingestor
    relay: OutboxRelay
    timers: TimerLoop
    ring: RingKeeper
    membership: Membership
    member: str
    """This tracker's name among the trackers sharing the partitions (host, pid, random)."""
    coordinator: PartitionCoordinator | None = None
    """Set by the FastStream app (app/bootstrap/worker.py), which consumes the partitions."""
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self) -> None:
        await self.readers.log.ensure_schema()
        self.publisher.on_reconnect(self.ring.ensure_soon)
        await self.publisher.connect()
        self.batcher.start()
        self.ring.ensure_soon()
        self._tasks = [
            asyncio.create_task(self.relay.run(), name="jobtrail-outbox-relay"),
            asyncio.create_task(self.timers.run(), name="jobtrail-timers"),
        ]

    async def stop(self) -> None:
        await self.ring.stop()
        await self.ring.store.close()
        await self.membership.close()
        await self.batcher.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.publisher.close()
        await self.readers.close()


def build_tracking(settings: Settings) -> Tracking:
    """Wire a tracker from settings (connects nothing until ``start``)."""
    projection = SqlProjectionStore(settings.sql_url)
    readers = Readers(open_event_log(settings.log_url), projection, load_policy(settings))
    clock = SystemClock()
    publisher = RabbitPublisher(
        settings.rabbit_url,
        partitions=settings.partitions,
        max_priority=readers.policy.document.max_priority,
    )
    health = Health()
    member = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
    relay = OutboxRelay(
        readers.store,
        publisher,
        clock,
        health=health,
        owner=member,
        lease=settings.outbox_lease_s,
    )
    tracker = Tracker(
        readers.log,
        readers.store,
        readers.policy,
        clock,
        on_outbox=relay.wake,
        router=build_router(readers.policy),
    )
    batcher = Batcher(
        tracker.record, health, max_size=settings.batch_size, max_wait=settings.batch_wait_ms / 1000
    )
    ingestor = Ingestor(batcher, publisher, rekey_unkeyed=settings.partitions > 1)
    ring = RingKeeper(
        SqlBarrierStore(projection.engine),  # one pool for the projection database
        RabbitRing(settings.rabbit_url, partitions=settings.partitions),
        ingestor,
        batcher,
        clock,
        settings.partitions,
        health=health,
    )
    return Tracking(
        settings=settings,
        readers=readers,
        clock=clock,
        publisher=publisher,
        health=health,
        tracker=tracker,
        batcher=batcher,
        ingestor=ingestor,
        relay=relay,
        timers=TimerLoop(tracker, health, interval=settings.timer_interval_ms / 1000),
        ring=ring,
        membership=SqlMembership(projection.engine),
        member=member,
    )

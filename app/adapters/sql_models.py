"""SQL tables of the projections: jobs, attempts, outbox, timers and checkpoints.

The schema itself is created by the Alembic migrations in ``migrations/``; these tables are what
the store queries and what autogenerate compares the migrated database against.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

projection_metadata = MetaData(naming_convention=NAMING_CONVENTION)

ID_LENGTH = 200
NAME_LENGTH = 200
KIND_LENGTH = 64

# Ids compare in byte order ("C") on PostgreSQL, so they sort as on SQLite and in Python.
Identifier = String(ID_LENGTH).with_variant(String(ID_LENGTH, collation="C"), "postgresql")


def as_aware_utc(value: datetime) -> datetime:
    """``value`` in UTC; a naive datetime is taken to be UTC already."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware datetime stored in UTC and always read back aware (SQLite keeps none)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else as_aware_utc(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        return None if value is None else as_aware_utc(value)


def _name(column: str, *, nullable: bool = True, length: int = NAME_LENGTH) -> Column[str]:
    return Column(column, String(length), nullable=nullable)


def _at(column: str, *, nullable: bool = True) -> Column[datetime]:
    return Column(column, UtcDateTime(), nullable=nullable)


LIST_FILTERS = (
    "status",
    "queue",
    "pool",
    "tenant",
    "model",
    "priority",
    "job_type",
    "last_error_code",
    "node_id",
)
"""Columns the Cloud lists jobs by; each has a paging index."""

jobs = Table(
    "jobs",
    projection_metadata,
    Column("job_id", Identifier, primary_key=True),
    _name("status", length=KIND_LENGTH),
    Column("attempt", Integer, nullable=False),
    Column("max_attempts", Integer, nullable=True),
    _name("job_type", length=KIND_LENGTH),
    _name("model"),
    _name("priority", length=KIND_LENGTH),
    _name("tenant"),
    _name("pool"),
    _name("queue"),
    _name("node_id"),
    _name("last_error_code"),
    Column("last_error_message", Text, nullable=True),
    Column("terminal_reason", Text, nullable=True),
    _at("next_deadline_at"),
    _name("deadline_kind", length=KIND_LENGTH),
    Column("anomalies", Integer, nullable=False),
    Column("last_seq", Integer, nullable=False),
    _at("submitted_at"),
    _at("updated_at"),
    # The tracker's snapshot of the job (0007): its fold up to entry snapshot_seq, whose stored
    # hash was snapshot_hash; written with the row, read back only by the tracker.
    Column("snapshot", Text, nullable=True),
    Column("snapshot_seq", Integer, nullable=True),
    Column("snapshot_hash", String(64), nullable=True),
    # A filtered page walks (filter, updated_at, job_id) in order: no sort, no scan (0002).
    *(Index(f"ix_jobs_{c}_page", c, "updated_at", "job_id") for c in LIST_FILTERS),
    Index("ix_jobs_page", "updated_at", "job_id"),
)

attempts = Table(
    "attempts",
    projection_metadata,
    Column("job_id", Identifier, primary_key=True),
    Column("attempt", Integer, primary_key=True, autoincrement=False),
    _name("pool"),
    _name("queue"),
    _name("node_id"),
    _at("reserved_at"),
    _at("ended_at"),
    _name("outcome", length=KIND_LENGTH),
    _name("error_code"),
    _at("queued_at"),  # 0008: the wait of a retried attempt runs from its republish
    Index("ix_attempts_ended_at", "ended_at", "outcome"),
    Index("ix_attempts_reserved_at", "reserved_at"),
)

outbox = Table(
    "outbox",
    projection_metadata,
    Column("event_id", Identifier, primary_key=True),
    Column("job_id", Identifier, nullable=False),
    _name("exchange", nullable=False, length=255),
    _name("routing_key", nullable=False, length=255),
    Column("body", LargeBinary, nullable=False),
    Column("headers", JSON(none_as_null=True), nullable=False),
    Column("priority", Integer, nullable=True),
    _at("created_at", nullable=False),
    _at("published_at"),
    # The relay's claim (0006): the tracker publishing the row, until when (see claim_outbox).
    Column("claimed_by", String(NAME_LENGTH), nullable=True),
    _at("claimed_until"),
)

# Only unpublished rows are ever scanned, so the indexes hold only those.
_unpublished = outbox.c.published_at.is_(None)
Index(
    "ix_outbox_unpublished",
    outbox.c.created_at,
    outbox.c.event_id,
    postgresql_where=_unpublished,
    sqlite_where=_unpublished,
)
# A claim skips jobs another tracker holds: their live claims are found by job (0006).
Index(
    "ix_outbox_unpublished_job",
    outbox.c.job_id,
    outbox.c.claimed_until,
    postgresql_where=_unpublished,
    sqlite_where=_unpublished,
)

timers = Table(
    "timers",
    projection_metadata,
    Column("job_id", Identifier, primary_key=True),
    _at("due_at", nullable=False),
    _name("kind", nullable=False, length=KIND_LENGTH),
    _at("claimed_until"),
    Index("ix_timers_due_at", "due_at"),
)

checkpoints = Table(
    "checkpoints",
    projection_metadata,
    Column("name", String(NAME_LENGTH), primary_key=True),
    Column("value", Text, nullable=False),
    _at("updated_at", nullable=False),
)

# Ring barriers (app/services/ring.py): after RabbitMQ lost the partition ring (a broker restart),
# every partition pauses at a marker until the events published meanwhile are recorded.
ring_barriers = Table(
    "ring_barriers",
    projection_metadata,
    Column("epoch", String(64), primary_key=True),
    _at("created_at", nullable=False),
    _at("opened_at"),
)

ring_arrivals = Table(
    "ring_arrivals",
    projection_metadata,
    Column("epoch", String(64), primary_key=True),
    Column("partition", Integer, primary_key=True, autoincrement=False),
    _at("arrived_at", nullable=False),
)

# Tracker membership (app/services/partitions.py): heartbeats, in the database's own clock
# (seconds since the epoch), from which every tracker computes the same partition shares.
trackers = Table(
    "trackers",
    projection_metadata,
    Column("member", String(200), primary_key=True),
    Column("expires", Float, nullable=False),
)

"""Initial schema: projections (jobs, attempts, outbox, timers, checkpoints) and the event log.

Revision ID: 0001
Revises:
Create Date: 2025-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Byte order ("C") on PostgreSQL, so job ids sort as on SQLite and in Python.
ID = sa.String(200).with_variant(sa.String(200, collation="C"), "postgresql")
NAME = sa.String(200)
KIND = sa.String(64)


def _at(name: str, *, nullable: bool = True) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _create_jobs() -> None:
    op.create_table(
        "jobs",
        sa.Column("job_id", ID, nullable=False),
        sa.Column("status", KIND, nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=True),
        sa.Column("job_type", KIND, nullable=True),
        sa.Column("model", NAME, nullable=True),
        sa.Column("priority", KIND, nullable=True),
        sa.Column("tenant", NAME, nullable=True),
        sa.Column("pool", NAME, nullable=True),
        sa.Column("queue", NAME, nullable=True),
        sa.Column("node_id", NAME, nullable=True),
        sa.Column("last_error_code", NAME, nullable=True),
        sa.Column("last_error_message", sa.Text(), nullable=True),
        sa.Column("terminal_reason", sa.Text(), nullable=True),
        _at("next_deadline_at"),
        sa.Column("deadline_kind", KIND, nullable=True),
        sa.Column("anomalies", sa.Integer(), nullable=False),
        sa.Column("last_seq", sa.Integer(), nullable=False),
        _at("submitted_at"),
        _at("updated_at"),
        sa.PrimaryKeyConstraint("job_id", name="pk_jobs"),
    )
    op.create_index("ix_jobs_status_updated_at", "jobs", ["status", "updated_at"])
    for column in ("pool", "tenant", "model", "queue", "priority", "job_type"):
        op.create_index(f"ix_jobs_{column}_status", "jobs", [column, "status"])
    op.create_index("ix_jobs_updated_at", "jobs", ["updated_at"])


def _create_attempts() -> None:
    op.create_table(
        "attempts",
        sa.Column("job_id", ID, nullable=False),
        sa.Column("attempt", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("pool", NAME, nullable=True),
        sa.Column("queue", NAME, nullable=True),
        sa.Column("node_id", NAME, nullable=True),
        _at("reserved_at"),
        _at("ended_at"),
        sa.Column("outcome", KIND, nullable=True),
        sa.Column("error_code", NAME, nullable=True),
        sa.PrimaryKeyConstraint("job_id", "attempt", name="pk_attempts"),
    )


def _create_outbox() -> None:
    op.create_table(
        "outbox",
        sa.Column("event_id", ID, nullable=False),
        sa.Column("job_id", ID, nullable=False),
        sa.Column("exchange", sa.String(255), nullable=False),
        sa.Column("routing_key", sa.String(255), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("headers", sa.JSON(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=True),
        _at("created_at", nullable=False),
        _at("published_at"),
        sa.PrimaryKeyConstraint("event_id", name="pk_outbox"),
    )
    unpublished = sa.text("published_at IS NULL")
    op.create_index(
        "ix_outbox_unpublished",
        "outbox",
        ["created_at", "event_id"],
        postgresql_where=unpublished,
        sqlite_where=unpublished,
    )


def _create_timers_and_checkpoints() -> None:
    op.create_table(
        "timers",
        sa.Column("job_id", ID, nullable=False),
        _at("due_at", nullable=False),
        sa.Column("kind", KIND, nullable=False),
        sa.PrimaryKeyConstraint("job_id", name="pk_timers"),
    )
    op.create_index("ix_timers_due_at", "timers", ["due_at"])
    op.create_table(
        "checkpoints",
        sa.Column("name", NAME, nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        _at("updated_at", nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_checkpoints"),
    )


def _create_events() -> None:
    op.create_table(
        "jobtrail_events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("job_id", ID, nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        _at("occurred_at", nullable=False),
        _at("recorded_at", nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ux_jobtrail_events_event_id", "jobtrail_events", ["event_id"], unique=True)
    op.create_index("ux_jobtrail_events_job_seq", "jobtrail_events", ["job_id", "seq"], unique=True)
    op.create_index("ix_jobtrail_events_recorded_at", "jobtrail_events", ["recorded_at"])
    op.create_index(
        "ix_jobtrail_events_type_recorded_at", "jobtrail_events", ["type", "recorded_at"]
    )


def upgrade() -> None:
    """Create every table of the projections and of the SQL event log."""
    _create_jobs()
    _create_attempts()
    _create_outbox()
    _create_timers_and_checkpoints()
    _create_events()


def downgrade() -> None:
    """Drop everything ``upgrade`` created."""
    for table in ("jobtrail_events", "checkpoints", "timers", "outbox", "attempts", "jobs"):
        op.drop_table(table)

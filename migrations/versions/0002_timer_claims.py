"""Timer claims (several trackers share due timers) and paging indexes for the Cloud's lists.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FILTERS = (
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
OLD_JOB_INDEXES = {
    "ix_jobs_status_updated_at": ("status", "updated_at"),
    "ix_jobs_pool_status": ("pool", "status"),
    "ix_jobs_tenant_status": ("tenant", "status"),
    "ix_jobs_model_status": ("model", "status"),
    "ix_jobs_queue_status": ("queue", "status"),
    "ix_jobs_priority_status": ("priority", "status"),
    "ix_jobs_job_type_status": ("job_type", "status"),
    "ix_jobs_updated_at": ("updated_at",),
}


def upgrade() -> None:
    with op.batch_alter_table("timers") as batch:
        batch.add_column(sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True))
    for name in OLD_JOB_INDEXES:
        op.drop_index(name, table_name="jobs")
    for column in FILTERS:
        op.create_index(f"ix_jobs_{column}_page", "jobs", [column, "updated_at", "job_id"])
    op.create_index("ix_jobs_page", "jobs", ["updated_at", "job_id"])
    op.create_index("ix_attempts_ended_at", "attempts", ["ended_at", "outcome"])


def downgrade() -> None:
    op.drop_index("ix_attempts_ended_at", table_name="attempts")
    op.drop_index("ix_jobs_page", table_name="jobs")
    for column in FILTERS:
        op.drop_index(f"ix_jobs_{column}_page", table_name="jobs")
    for name, columns in OLD_JOB_INDEXES.items():
        op.create_index(name, "jobs", list(columns))
    with op.batch_alter_table("timers") as batch:
        batch.drop_column("claimed_until")

"""Outbox claims: each unpublished outbox row is published by one tracker at a time.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("claimed_by", sa.String(200), nullable=True))
        batch.add_column(sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True))
    unpublished = sa.text("published_at IS NULL")
    op.create_index(
        "ix_outbox_unpublished_job",
        "outbox",
        ["job_id", "claimed_until"],
        postgresql_where=unpublished,
        sqlite_where=unpublished,
    )


def downgrade() -> None:
    op.drop_index("ix_outbox_unpublished_job", table_name="outbox")
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("claimed_until")
        batch.drop_column("claimed_by")

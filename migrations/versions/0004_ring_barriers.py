"""Ring barriers: partitions pause at a marker while a tracker rebuilds RabbitMQ's hash ring.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "ring_barriers",
        sa.Column("epoch", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("epoch", name="pk_ring_barriers"),
    )
    op.create_table(
        "ring_arrivals",
        sa.Column("epoch", sa.String(64), nullable=False),
        sa.Column("partition", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("arrived_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("epoch", "partition", name="pk_ring_arrivals"),
    )


def downgrade() -> None:
    op.drop_table("ring_arrivals")
    op.drop_table("ring_barriers")

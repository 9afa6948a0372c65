"""Job snapshots: the tracker's fold of each job up to a known entry, stored with its row.

A tracker settles a job from its snapshot and the entries after it (app/services/snapshots.py),
not from its whole history. Rows without one (all of them, right after this migration) are folded
whole once and get one.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("snapshot", sa.Text(), nullable=True))
        batch.add_column(sa.Column("snapshot_seq", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("snapshot_hash", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("snapshot_hash")
        batch.drop_column("snapshot_seq")
        batch.drop_column("snapshot")

"""Daily Merkle anchors of a SQL event log (``jobtrail anchor`` / ``verify-anchors``).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.String(200).with_variant(sa.String(200, collation="C"), "postgresql")


def upgrade() -> None:
    # `jobtrail anchor` creates the table itself on a log database that was never migrated.
    if sa.inspect(op.get_bind()).has_table("jobtrail_anchors"):
        return
    op.create_table(
        "jobtrail_anchors",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("root", sa.String(64), nullable=False),
        sa.Column("entry_count", sa.BigInteger(), nullable=False),
        sa.Column("first_job_id", ID, nullable=True),
        sa.Column("first_seq", sa.Integer(), nullable=True),
        sa.Column("last_job_id", ID, nullable=True),
        sa.Column("last_seq", sa.Integer(), nullable=True),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("day", name="pk_jobtrail_anchors"),
    )


def downgrade() -> None:
    op.drop_table("jobtrail_anchors")

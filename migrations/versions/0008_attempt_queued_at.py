"""When each attempt was queued, so the projection knows every attempt's wait for a node.

The wait of attempt 1 runs from the submission (``jobs.submitted_at``), but a retried, rerouted
or redriven attempt waits from its republish, which no other column holds. The latency report
(``GET /sla?source=projection``) reads it, and windows by ``reserved_at`` through the new index.
Rows written before this migration have no ``queued_at`` until ``jobtrail rebuild``.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("attempts") as batch:
        batch.add_column(sa.Column("queued_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_attempts_reserved_at", "attempts", ["reserved_at"])


def downgrade() -> None:
    op.drop_index("ix_attempts_reserved_at", table_name="attempts")
    with op.batch_alter_table("attempts") as batch:
        batch.drop_column("queued_at")

"""bot owner: which bot process answers each job

Revision ID: 0010_bot_owner
Revises: 0009_settle_points
Create Date: 2026-12-08 10:00:00.000000

Several bot processes share one PostgreSQL ledger (docs/scaling.md): each recovers only its own
unfinished jobs after a restart, and another process takes over a dead one's jobs by moving their
rows to itself. Existing rows belong to the default bot id, "stepgrid".
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_bot_owner"
down_revision: str | Sequence[str] | None = "0009_settle_points"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("bot_id", sa.Text(), server_default="stepgrid", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("bot_id")

"""settle points: where each step-ladder grid's rows settled, and each server's learned-steps switch

Revision ID: 0009_settle_points
Revises: 0008_postgres
Create Date: 2026-12-14 10:00:00.000000

settle_points: one row per row (scheduler) of a finished step-ladder grid: its job, server, model,
scheduler, size, ladder and the step count where it settled (NULL: not settled by its last step count).
guild_limits.learned_steps: True lets /imagine without steps use where the server's grids settle
(NULL: the operator's default). Grids finished before this revision are not measured after the fact.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_settle_points"
down_revision: str | Sequence[str] | None = "0008_postgres"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "settle_points",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("row_index", sa.Integer(), nullable=False),
        sa.Column("guild_id", sa.BigInteger(), nullable=True),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("scheduler", sa.Text(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("ladder", sa.JSON(), nullable=False),
        sa.Column("settle_step", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_settle_points_job_id_jobs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_settle_points")),
        sa.UniqueConstraint("job_id", "row_index", name=op.f("uq_settle_points_job_id")),
    )
    op.create_index(
        "ix_settle_points_guild_model_scheduler", "settle_points", ["guild_id", "model", "scheduler"], unique=False
    )
    with op.batch_alter_table("guild_limits", schema=None) as batch_op:
        batch_op.add_column(sa.Column("learned_steps", sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("guild_limits", schema=None) as batch_op:
        batch_op.drop_column("learned_steps")
    op.drop_index("ix_settle_points_guild_model_scheduler", table_name="settle_points")
    op.drop_table("settle_points")

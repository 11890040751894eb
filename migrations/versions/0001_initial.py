"""initial schema: jobs, guild limits, limits changes

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-26 06:51:12.805071
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001_initial"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "guild_limits",
        sa.Column("guild_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("max_steps", sa.Integer(), nullable=True),
        sa.Column("default_steps", sa.Integer(), nullable=True),
        sa.Column("allowed_schedulers", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("default_scheduler", sa.String(length=32), nullable=True),
        sa.Column("max_grid_cells", sa.Integer(), nullable=True),
        sa.Column("max_image_size", sa.Integer(), nullable=True),
        sa.Column("max_compute_per_request", sa.BigInteger(), nullable=True),
        sa.Column("daily_steps_per_user", sa.Integer(), nullable=True),
        sa.Column("max_concurrent_jobs_per_user", sa.Integer(), nullable=True),
        sa.Column("banned_words", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=True),
        sa.Column("updated_by", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("guild_id", name=op.f("pk_guild_limits")),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("guild_id", sa.BigInteger(), nullable=True),
        sa.Column("channel_id", sa.BigInteger(), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("command", sa.String(length=32), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("scheduler", sa.String(length=32), nullable=False),
        sa.Column("images", sa.Integer(), nullable=False),
        sa.Column("steps_requested", sa.Integer(), nullable=False),
        sa.Column("origin", sa.String(length=32), nullable=True),
        sa.Column("parent_job_id", sa.String(length=32), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("queue_seconds", sa.Float(), nullable=True),
        sa.Column("gpu_seconds", sa.Float(), nullable=True),
        sa.Column("steps_run", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("application_id", sa.BigInteger(), nullable=True),
        sa.Column("interaction_token", sa.Text(), nullable=True),
        sa.Column("message_id", sa.BigInteger(), nullable=True),
        sa.Column("message_channel_id", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index("ix_jobs_created_at", ["created_at"], unique=False)
        batch_op.create_index("ix_jobs_guild_user_created", ["guild_id", "user_id", "created_at"], unique=False)
        batch_op.create_index("ix_jobs_status", ["status"], unique=False)

    op.create_table(
        "limits_changes",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("guild_id", sa.BigInteger(), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("field", sa.String(length=64), nullable=False),
        sa.Column("old_value", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("new_value", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("changed_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["guild_id"], ["guild_limits.guild_id"], name=op.f("fk_limits_changes_guild_id_guild_limits")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_limits_changes")),
    )
    with op.batch_alter_table("limits_changes", schema=None) as batch_op:
        batch_op.create_index("ix_limits_changes_guild_changed", ["guild_id", "changed_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("limits_changes", schema=None) as batch_op:
        batch_op.drop_index("ix_limits_changes_guild_changed")

    op.drop_table("limits_changes")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_status")
        batch_op.drop_index("ix_jobs_guild_user_created")
        batch_op.drop_index("ix_jobs_created_at")

    op.drop_table("jobs")
    op.drop_table("guild_limits")

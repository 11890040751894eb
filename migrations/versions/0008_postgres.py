"""postgres: names without a length limit where a value can be longer than its column said

Revision ID: 0008_postgres
Revises: 0007_image_limits
Create Date: 2026-12-07 21:30:00.000000

SQLite never enforced VARCHAR lengths; PostgreSQL does, and refuses the whole write. Three columns
held values longer than their declared length: jobs.scheduler (a scheduler grid's rows joined,
"Euler a, DDIM, Heun, ...": 32), jobs.model and guild_limits.default_model (a model's registry name,
which for one configured model is its hub id or folder path: 100). They become TEXT. On SQLite the
batch copies each table once; every value reads back the same.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_postgres"
down_revision: str | Sequence[str] | None = "0007_image_limits"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.alter_column("scheduler", type_=sa.Text(), existing_type=sa.String(length=32), existing_nullable=False)
        batch_op.alter_column("model", type_=sa.Text(), existing_type=sa.String(length=100), existing_nullable=True)
    with op.batch_alter_table("guild_limits", schema=None) as batch_op:
        batch_op.alter_column(
            "default_model", type_=sa.Text(), existing_type=sa.String(length=100), existing_nullable=True
        )


def downgrade() -> None:
    # Back to the lengths SQLite ignores; on PostgreSQL, values longer than them are cut (as `USING` says).
    with op.batch_alter_table("guild_limits", schema=None) as batch_op:
        batch_op.alter_column(
            "default_model",
            type_=sa.String(length=100),
            existing_type=sa.Text(),
            existing_nullable=True,
            postgresql_using="left(default_model, 100)",
        )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.alter_column(
            "model",
            type_=sa.String(length=100),
            existing_type=sa.Text(),
            existing_nullable=True,
            postgresql_using="left(model, 100)",
        )
        batch_op.alter_column(
            "scheduler",
            type_=sa.String(length=32),
            existing_type=sa.Text(),
            existing_nullable=False,
            postgresql_using="left(scheduler, 32)",
        )

"""postgres: names without a length limit where a value can be longer than its column said

Revision ID: 0008_postgres
Revises: 0007_image_limits
Create Date: 2026-12-07 21:30:00.000000

SQLite never enforced VARCHAR lengths; PostgreSQL does, and refuses the whole write. Three columns
held values longer than their declared length: jobs.scheduler (a scheduler grid's rows joined,
"Euler a, DDIM, Heun, ...": 32), jobs.model and guild_limits.default_model (a model's registry name,
which for one configured model is its hub id or folder path: 100). They become TEXT. On SQLite each
batch copies its table; every value reads back the same.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_postgres"
down_revision: str | Sequence[str] | None = "0007_image_limits"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# (table, column, its old VARCHAR length, nullable)
COLUMNS = (
    ("jobs", "scheduler", 32, False),
    ("jobs", "model", 100, True),
    ("guild_limits", "default_model", 100, True),
)


def upgrade() -> None:
    for table, column, length, nullable in COLUMNS:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.alter_column(
                column, type_=sa.Text(), existing_type=sa.String(length=length), existing_nullable=nullable
            )


def downgrade() -> None:
    # Back to the lengths SQLite ignores; on PostgreSQL, values longer than them are cut (as `USING` says).
    for table, column, length, nullable in reversed(COLUMNS):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.alter_column(
                column,
                type_=sa.String(length=length),
                existing_type=sa.Text(),
                existing_nullable=nullable,
                postgresql_using=f"left({column}, {length})",
            )

"""models: the model of each job, and per-server model limits

Revision ID: 0003_models
Revises: 0001_initial
Create Date: 2026-12-01 06:10:00.000000

Old jobs keep a NULL model (shown as "—"; their requests run on the default model). NULL limits
mean "the operator's": every registry model allowed, the registry's default, its ceilings.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_models"
down_revision: str | Sequence[str] | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("model", sa.String(length=100), nullable=True))
    with op.batch_alter_table("guild_limits", schema=None) as batch_op:
        batch_op.add_column(sa.Column("allowed_models", sa.JSON(none_as_null=True), nullable=True))
        batch_op.add_column(sa.Column("default_model", sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column("model_max_steps", sa.JSON(none_as_null=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("guild_limits", schema=None) as batch_op:
        batch_op.drop_column("model_max_steps")
        batch_op.drop_column("default_model")
        batch_op.drop_column("allowed_models")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("model")

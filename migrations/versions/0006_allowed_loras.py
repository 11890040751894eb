"""LoRAs: the LoRAs each server lets its members choose, and each job's LoRAs

Revision ID: 0006_allowed_loras
Revises: 0005_safety
Create Date: 2026-12-07 18:40:00.000000

guild_limits.allowed_loras: NULL means "every LoRA of the operator's registry"; an empty list, none.
jobs.loras: the job's LoRAs with their weights ("pixel 0.8, lcm 1"), NULL without any (and for jobs
recorded before LoRAs); their full record stays in each job's params.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_allowed_loras"
down_revision: str | Sequence[str] | None = "0005_safety"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("guild_limits", schema=None) as batch_op:
        batch_op.add_column(sa.Column("allowed_loras", sa.JSON(none_as_null=True), nullable=True))
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("loras", sa.String(length=400), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("loras")
    with op.batch_alter_table("guild_limits", schema=None) as batch_op:
        batch_op.drop_column("allowed_loras")

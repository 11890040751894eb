"""allowed_loras: the LoRAs each server lets its members choose

Revision ID: 0005_allowed_loras
Revises: 0004_command_syncs
Create Date: 2026-12-07 18:40:00.000000

NULL means "every LoRA of the operator's registry"; an empty list, none.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_allowed_loras"
down_revision: str | Sequence[str] | None = "0004_command_syncs"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("guild_limits", schema=None) as batch_op:
        batch_op.add_column(sa.Column("allowed_loras", sa.JSON(none_as_null=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("guild_limits", schema=None) as batch_op:
        batch_op.drop_column("allowed_loras")

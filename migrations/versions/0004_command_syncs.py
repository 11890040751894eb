"""command_syncs: the hash of the slash commands last synced to each scope

Revision ID: 0004_command_syncs
Revises: 0003_models
Create Date: 2026-12-03 18:40:00.000000

The bot syncs its slash commands at start only when their definitions changed since the last
sync to that scope (`stepgrid sync` forces one); an empty table means "never synced": sync.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_command_syncs"
down_revision: str | Sequence[str] | None = "0003_models"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "command_syncs",
        sa.Column("scope", sa.String(length=64), nullable=False),
        sa.Column("payload_sha256", sa.String(length=64), nullable=False),
        sa.Column("synced_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("scope", name=op.f("pk_command_syncs")),
    )


def downgrade() -> None:
    op.drop_table("command_syncs")

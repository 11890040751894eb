"""safety: where a server posts flagged pictures, and how many pictures each job withheld

Revision ID: 0005_safety
Revises: 0004_command_syncs
Create Date: 2026-12-10 12:00:00.000000

`guild_limits.flagged_images` is the server's choice (NULL: in age-restricted channels only);
`jobs.images_withheld` counts the pictures the image checker flagged that were not posted.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_safety"
down_revision: str | Sequence[str] | None = "0004_command_syncs"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("guild_limits") as batch:
        batch.add_column(sa.Column("flagged_images", sa.String(length=32), nullable=True))
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("images_withheld", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("images_withheld")
    with op.batch_alter_table("guild_limits") as batch:
        batch.drop_column("flagged_images")

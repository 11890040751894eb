"""images in: each server's switches for input images and upscales; each job's kind and input image

Revision ID: 0007_image_limits
Revises: 0006_allowed_loras
Create Date: 2026-12-12 10:00:00.000000

guild_limits: `image_input` (False: members may not attach images; NULL: the operator's), `max_input_megapixels`
and `max_upscale_size` (NULL: the operator's; for upscales, the server's max image size).
jobs: `kind` (text2img, img2img, vary, upscale, grid, img2img-grid) and the input image's SHA-256, width,
height and bytes (never the image). Rows already there get their kind and what their params say of the
input (its SHA-256 and bytes; the width and height of an image are not in the params, so they stay NULL).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0007_image_limits"
down_revision: str | Sequence[str] | None = "0006_allowed_loras"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JOBS = sa.table(
    "jobs",
    sa.column("id", sa.String),
    sa.column("command", sa.String),
    sa.column("origin", sa.String),
    sa.column("params", sa.JSON),
    sa.column("kind", sa.String),
    sa.column("input_sha256", sa.String),
    sa.column("input_bytes", sa.Integer),
)


def kind_of(command: str, origin: str | None, params: dict[str, Any]) -> str:
    """A recorded job's kind, from what its row holds (the same rules as `bot.storage.models.job_kind`,
    written out here: a migration must not change when the code does)."""
    image = bool(params.get("image_sha256"))
    if command != "imagine":
        return "img2img-grid" if image else "grid"
    if params.get("hires"):
        return "upscale"
    if image and origin in ("vary", "vary-strong"):
        return "vary"
    return "img2img" if image else "text2img"


def upgrade() -> None:
    with op.batch_alter_table("guild_limits", schema=None) as batch_op:
        batch_op.add_column(sa.Column("image_input", sa.Boolean(), nullable=True))
        batch_op.add_column(sa.Column("max_input_megapixels", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("max_upscale_size", sa.Integer(), nullable=True))
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("kind", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("input_sha256", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("input_width", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("input_height", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("input_bytes", sa.Integer(), nullable=True))
    connection = op.get_bind()
    rows = connection.execute(sa.select(_JOBS.c.id, _JOBS.c.command, _JOBS.c.origin, _JOBS.c.params)).all()
    for job_id, command, origin, params in rows:
        params = params if isinstance(params, dict) else {}
        sha256, size = params.get("image_sha256"), params.get("image_bytes")
        connection.execute(
            _JOBS.update()
            .where(_JOBS.c.id == job_id)
            .values(
                kind=kind_of(command, origin, params),
                input_sha256=sha256 if isinstance(sha256, str) else None,
                input_bytes=size if isinstance(size, int) else None,
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("input_bytes")
        batch_op.drop_column("input_height")
        batch_op.drop_column("input_width")
        batch_op.drop_column("input_sha256")
        batch_op.drop_column("kind")
    with op.batch_alter_table("guild_limits", schema=None) as batch_op:
        batch_op.drop_column("max_upscale_size")
        batch_op.drop_column("max_input_megapixels")
        batch_op.drop_column("image_input")

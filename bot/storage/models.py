"""SQLAlchemy models: the job ledger, per-server limits and their audit trail, the last command sync, where
grids settled.

The schema is owned by Alembic (`migrations/`); a test checks these models match the migrations.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import TypeDecorator

from inference.requests import REQUEST_TYPES, GenerateRequest, HiresFix, PlainRow, Request

# The ledger's `command` of a job names its request's type: the command that asks for it.
_REQUEST_TYPES: dict[str, type[Request]] = {cls.command: cls for cls in REQUEST_TYPES}
COMMANDS = tuple(_REQUEST_TYPES)


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    # The result is being uploaded: its figures are recorded, the upload may or may not have
    # reached Discord. Start-up recovery looks at the job's message to tell which.
    DELIVERING = "delivering"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


UNFINISHED_STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.DELIVERING)
FINISHED_STATUSES = (JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED)


class UTCDateTime(TypeDecorator[datetime]):
    """Stored as naive UTC (SQLite has no time zones), always handed back as an aware UTC datetime."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass an aware (UTC) datetime")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


def utcnow() -> datetime:
    """The current time, aware, in UTC."""
    return datetime.now(UTC)


# Named constraints so that batch migrations on SQLite can find and alter them.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class JobRow(Base):
    """One accepted `/imagine`, `/compare-steps` or `/compare-schedulers` (or button click): a ledger row
    from queued to finished."""

    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_guild_user_created", "guild_id", "user_id", "created_at"),
        Index("ix_jobs_status", "status"),
        Index("ix_jobs_created_at", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    guild_id: Mapped[int | None] = mapped_column(BigInteger)  # None in DMs
    channel_id: Mapped[int] = mapped_column(BigInteger)
    user_id: Mapped[int] = mapped_column(BigInteger)
    command: Mapped[str] = mapped_column(String(32))
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    # Denormalised from params so that usage queries stay plain SQL.
    # Unbounded (TEXT): a scheduler grid's rows joined; a model's name can be its hub id or folder path.
    scheduler: Mapped[str] = mapped_column(Text)
    # The registry name of the model; NULL for jobs recorded before there were several models.
    model: Mapped[str | None] = mapped_column(Text)
    # Its LoRAs as "name weight, name weight" (usage groups by it); NULL without any.
    loras: Mapped[str | None] = mapped_column(String(400))
    images: Mapped[int] = mapped_column(Integer)
    steps_requested: Mapped[int] = mapped_column(Integer)

    # What started it: the slash command, or a button ("reroll", "more-steps", ...) on `parent_job_id`'s result.
    origin: Mapped[str | None] = mapped_column(String(32))
    parent_job_id: Mapped[str | None] = mapped_column(String(32))

    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    queue_seconds: Mapped[float | None] = mapped_column(Float)
    gpu_seconds: Mapped[float | None] = mapped_column(Float)
    steps_run: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    # Pictures the image checker flagged that were not posted in the job's channel (counts, never images).
    images_withheld: Mapped[int | None] = mapped_column(Integer)
    # What kind of job it is (JOB_KINDS: text2img, img2img, vary, upscale, grid, img2img-grid); NULL only for
    # rows a migration could not classify.
    kind: Mapped[str | None] = mapped_column(String(16))
    # Its input image, never the image itself: the PNG's SHA-256, pixel size and bytes (NULL without one).
    input_sha256: Mapped[str | None] = mapped_column(String(64))
    input_width: Mapped[int | None] = mapped_column(Integer)
    input_height: Mapped[int | None] = mapped_column(Integer)
    input_bytes: Mapped[int | None] = mapped_column(Integer)

    # The bot process that answers it (STEPGRID_BOT_ID): its own restart, or another process taking over its
    # jobs once it is dead, moves exactly its rows (docs/scaling.md).
    bot_id: Mapped[str] = mapped_column(Text, default="stepgrid", server_default="stepgrid")

    # What a restarted bot needs to answer: the interaction (valid for 15 minutes; the token is
    # cleared once the job finishes), else the channel.
    application_id: Mapped[int | None] = mapped_column(BigInteger)
    interaction_token: Mapped[str | None] = mapped_column(Text)
    message_id: Mapped[int | None] = mapped_column(BigInteger)
    message_channel_id: Mapped[int | None] = mapped_column(BigInteger)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED_STATUSES

    def to_request(self, image: bytes = b"") -> Request:
        """Rebuild the exact request this job was accepted with (`image`: its input image, kept on disk)."""
        return params_to_request(self.command, self.params, image=image)

    def set_kind_and_input(self, request: Request, origin: str | None) -> None:
        """The columns that describe the job's kind and its input image, from its request."""
        self.kind = job_kind(request, origin)
        image = request.image
        self.input_sha256 = hashlib.sha256(image).hexdigest() if image else None
        self.input_width, self.input_height = png_size(image) if image else (None, None)
        self.input_bytes = len(image) if image else None

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.command} {self.status} user={self.user_id} guild={self.guild_id}>"


class GuildLimits(Base):
    """A server's own limits. NULL means "use the operator's ceiling/default"."""

    __tablename__ = "guild_limits"

    guild_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    max_steps: Mapped[int | None] = mapped_column(Integer)
    default_steps: Mapped[int | None] = mapped_column(Integer)
    allowed_schedulers: Mapped[list[str] | None] = mapped_column(JSON(none_as_null=True))
    default_scheduler: Mapped[str | None] = mapped_column(String(32))
    max_grid_cells: Mapped[int | None] = mapped_column(Integer)
    max_image_size: Mapped[int | None] = mapped_column(Integer)
    max_compute_per_request: Mapped[int | None] = mapped_column(BigInteger)
    daily_steps_per_user: Mapped[int | None] = mapped_column(Integer)
    max_concurrent_jobs_per_user: Mapped[int | None] = mapped_column(Integer)
    banned_words: Mapped[list[str] | None] = mapped_column(JSON(none_as_null=True))
    allowed_models: Mapped[list[str] | None] = mapped_column(JSON(none_as_null=True))
    default_model: Mapped[str | None] = mapped_column(Text)
    model_max_steps: Mapped[dict[str, int] | None] = mapped_column(JSON(none_as_null=True))  # {model: ceiling}
    flagged_images: Mapped[str | None] = mapped_column(String(32))  # where flagged pictures may be posted
    allowed_loras: Mapped[list[str] | None] = mapped_column(JSON(none_as_null=True))  # [] = none allowed
    image_input: Mapped[bool | None] = mapped_column(Boolean)  # False: members may not attach images here
    max_input_megapixels: Mapped[float | None] = mapped_column(Float)
    max_upscale_size: Mapped[int | None] = mapped_column(Integer)
    # True: /imagine without steps runs where this server's grids settle (bot.storage.sweet_spots)
    learned_steps: Mapped[bool | None] = mapped_column(Boolean)
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    updated_by: Mapped[int | None] = mapped_column(BigInteger)


class LimitsChange(Base):
    """Audit trail: one row per field changed by `/limits set` or `/limits reset`."""

    __tablename__ = "limits_changes"
    __table_args__ = (Index("ix_limits_changes_guild_changed", "guild_id", "changed_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    guild_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("guild_limits.guild_id"))
    user_id: Mapped[int] = mapped_column(BigInteger)
    field: Mapped[str] = mapped_column(String(64))
    old_value: Mapped[Any] = mapped_column(JSON(none_as_null=True), nullable=True)
    new_value: Mapped[Any] = mapped_column(JSON(none_as_null=True), nullable=True)
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime())


class SettlePoint(Base):
    """Where one row of a finished step-ladder grid settled (`bot.pictures.sweet_spot`): a server's memory of
    its sweet spots, read by `/sweet-spots` and by `/imagine` under `learned_steps`. One row per grid row
    (scheduler); `settle_step` NULL means the row had not settled by the ladder's last step count."""

    __tablename__ = "settle_points"
    __table_args__ = (
        UniqueConstraint("job_id", "row_index"),  # a result delivered twice (recovery) is remembered once
        Index("ix_settle_points_guild_model_scheduler", "guild_id", "model", "scheduler"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(32), ForeignKey("jobs.id"))
    row_index: Mapped[int] = mapped_column(Integer)  # the grid row (0 = the top row)
    guild_id: Mapped[int | None] = mapped_column(BigInteger)
    model: Mapped[str] = mapped_column(Text)
    scheduler: Mapped[str] = mapped_column(Text)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    ladder: Mapped[list[int]] = mapped_column(JSON)  # the row's step counts, ascending
    settle_step: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class CommandSync(Base):
    """The slash commands last synced to one scope (an application's global commands, or one guild's), by hash.

    The bot syncs at start only when the hash of what it would send differs: every sync counts
    against Discord's daily limit on command creates.
    """

    __tablename__ = "command_syncs"

    scope: Mapped[str] = mapped_column(String(64), primary_key=True)  # "<application id>/global" or "/guild/<id>"
    payload_sha256: Mapped[str] = mapped_column(String(64))
    synced_at: Mapped[datetime] = mapped_column(UTCDateTime())


def in_guild(guild_id: int | None) -> ColumnElement[bool]:
    """Filter for jobs of one server (None: direct messages)."""
    return JobRow.guild_id.is_(None) if guild_id is None else JobRow.guild_id == guild_id


# --- request <-> params ----------------------------------------------------------------------


def command_of(request: Request) -> str:
    """The ledger's command name for a request."""
    return request.command


KIND_TEXT2IMG = "text2img"
KIND_IMG2IMG = "img2img"
KIND_VARY = "vary"
KIND_UPSCALE = "upscale"
KIND_GRID = "grid"
KIND_IMG2IMG_GRID = "img2img-grid"
JOB_KINDS = (KIND_TEXT2IMG, KIND_IMG2IMG, KIND_VARY, KIND_UPSCALE, KIND_GRID, KIND_IMG2IMG_GRID)
VARY_ORIGINS = ("vary", "vary-strong")


def job_kind(request: Request, origin: str | None) -> str:
    """What kind of job a request is: from text or from an image, one image or a grid; a Vary (the
    button) or an Upscale (a hires pass) of an image."""
    if not isinstance(request, GenerateRequest):
        return KIND_IMG2IMG_GRID if request.image else KIND_GRID
    if request.hires is not None:
        return KIND_UPSCALE
    if request.image and origin in VARY_ORIGINS:
        return KIND_VARY
    return KIND_IMG2IMG if request.image else KIND_TEXT2IMG


def png_size(png: bytes) -> tuple[int | None, int | None]:
    """(width, height) from a PNG's header (IHDR), without decoding it; (None, None) if it is not a PNG."""
    if len(png) < 24 or not png.startswith(b"\x89PNG\r\n\x1a\n") or png[12:16] != b"IHDR":
        return None, None
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


# The params key that holds what a member typed while no model was known yet: the request beside it is
# provisional until the job is built with its model's defaults (`params_to_request` ignores the key).
UNBUILT_OPTIONS = "unbuilt_options"
# The params key that holds what was changed in the job's input image ("it was converted from CMYK to RGB").
INPUT_NOTES = "input_notes"
# The params key that holds where an /imagine's steps came from under `learned_steps` ("20 steps: where this
# server's grids settle for Euler"), said with the result (a restarted bot still says it).
STEPS_NOTE = "steps_note"


def request_to_params(request: Request) -> dict[str, Any]:
    """Every field of the request as JSON-safe values (tuples become lists). An input image is not
    stored, only its size and SHA-256 (the image itself waits on disk until the job ends)."""
    params: dict[str, Any] = {}
    for f in dataclasses.fields(request):
        value = getattr(request, f.name)
        if f.name == "image":
            if value:
                params["image_bytes"], params["image_sha256"] = len(value), hashlib.sha256(value).hexdigest()
            continue
        if isinstance(value, HiresFix | PlainRow):
            value = dataclasses.asdict(value)
        params[f.name] = list(value) if isinstance(value, tuple) else value
    return params


def loras_label(request: Request) -> str | None:
    """A request's LoRAs as the ledger's `loras` column and /usage-server show them: "pixel 0.8, lcm 1"."""
    return ", ".join(f"{name} {weight:g}" for name, weight in request.loras)[:400] or None


def _tuples(value: list[Any]) -> tuple[Any, ...]:
    """JSON lists back to tuples, nested ones too (a request's LoRAs are (name, weight) pairs)."""
    return tuple(_tuples(item) if isinstance(item, list) else item for item in value)


def params_to_request(command: str, params: dict[str, Any], *, image: bytes = b"") -> Request:
    """Rebuild the request stored by `request_to_params`, with its input image where it had one;
    fields this version doesn't know are ignored."""
    cls = _REQUEST_TYPES.get(command)
    if cls is None:
        raise ValueError(f"unknown command {command!r}; expected one of {', '.join(COMMANDS)}")
    known = {f.name for f in dataclasses.fields(cls)} - {"image"}
    # JSON has lists where the request has tuples (a grid's steps and schedulers).
    kwargs: dict[str, Any] = {
        name: _tuples(value) if isinstance(value, list) else value for name, value in params.items() if name in known
    }
    if isinstance(kwargs.get("hires"), dict):
        kwargs["hires"] = HiresFix(**kwargs["hires"])
    if isinstance(kwargs.get("without_loras"), dict):
        kwargs["without_loras"] = PlainRow(**kwargs["without_loras"])
    if params.get("image_sha256"):
        if not image:
            raise ValueError("this job's input image was not given")
        kwargs["image"] = image
    return cls(**kwargs)

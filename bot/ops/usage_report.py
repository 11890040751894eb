"""Usage figures for people: a member's usage and quota, the `/usage-server` periods, the operator's CSV exports.

The queries are the ledger's (`bot.storage.ledger`); this module puts them together with the limits.
"""

from __future__ import annotations

import asyncio
import csv
import json
import logging
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

import sqlalchemy as sa
from sqlalchemy.orm import Session

from bot.limits.checks import day_start, next_quota_reset
from bot.limits.server import EffectiveLimits
from bot.pictures.render import usage_chart_png
from bot.storage.ledger import Ledger
from bot.storage.migrate import DatabaseUnusable, check_database_file, read_only_uri
from bot.storage.models import JobRow, LimitsChange
from bot.storage.postgres import SETTING, blocking_engine, shown
from bot.storage.usage import KindTotal

log = logging.getLogger(__name__)

# `/usage server period:` choices and how far back each reaches (None: since the first job).
USAGE_PERIODS: dict[str, timedelta | None] = {
    "today": None,  # since midnight UTC (limits.day_start), handled by period_start
    "7 days": timedelta(days=7),
    "30 days": timedelta(days=30),
    "all time": None,
}

CSV_COLUMNS: tuple[str, ...] = (
    "id",
    "created_at",
    "started_at",
    "finished_at",
    "guild_id",
    "channel_id",
    "user_id",
    "command",
    "kind",
    "origin",
    "parent_job_id",
    "status",
    "model",
    "scheduler",
    "images",
    "steps_requested",
    "steps_run",
    "queue_seconds",
    "gpu_seconds",
    "attempts",
    "width",
    "height",
    "steps",
    "film_frames",  # a Steps film's frames (one per step); empty for other jobs
    "seed",
    "guidance",
    "prompt",
    "negative_prompt",
    "error",
    "input_sha256",  # the input image's, never the image itself; empty without one
    "input_width",
    "input_height",
    "input_bytes",
)


LIMITS_CSV_COLUMNS: tuple[str, ...] = ("id", "changed_at", "guild_id", "user_id", "field", "old_value", "new_value")


@dataclass(frozen=True)
class MemberUsage:
    """One member's usage in one server: all-time totals and today's quota."""

    jobs: int
    images: int  # images delivered (grid cells count one each)
    steps: int  # denoising steps that ran, failed and cancelled jobs included
    gpu_seconds: float
    steps_today: int
    daily_quota: int
    resets_at: datetime
    by_kind: tuple[KindTotal, ...] = ()  # the same figures by kind of job (text2img, img2img, vary, …)

    @property
    def quota_remaining(self) -> int:
        return max(0, self.daily_quota - self.steps_today)


def period_start(period: str, now: datetime) -> datetime | None:
    """The start of a `/usage server` period ("today", "7 days", "30 days", "all time")."""
    if period not in USAGE_PERIODS:
        raise ValueError(f"unknown period {period!r}; choose one of: {', '.join(USAGE_PERIODS)}")
    if period == "today":
        return day_start(now)
    span = USAGE_PERIODS[period]
    return None if span is None else now - span


async def member_usage(
    ledger: Ledger, guild_id: int | None, user_id: int, limits: EffectiveLimits, *, now: datetime | None = None
) -> MemberUsage:
    """`/usage`: the member's own images, steps, GPU seconds and remaining daily quota."""
    now = now or ledger.database.clock()
    totals = await ledger.member_totals(guild_id, user_id)
    steps_today = await ledger.steps_used_today(guild_id, user_id, now=now)
    return MemberUsage(
        jobs=totals.jobs,
        images=totals.images,
        steps=totals.steps,
        gpu_seconds=totals.gpu_seconds,
        steps_today=steps_today,
        daily_quota=limits.daily_steps_per_user,
        resets_at=next_quota_reset(now),
        by_kind=await ledger.kind_totals(guild_id, user_id=user_id),
    )


def kind_lines(totals: Sequence[KindTotal]) -> str:
    """Usage by kind of job, a line each: "img2img: 3 jobs, 3 images, 54 steps, 4.1 s"."""
    return "\n".join(
        f"{total.kind or '— (before kinds were recorded)'}: {total.jobs:,} jobs, {total.images:,} images, "
        f"{total.steps:,} steps, {total.gpu_seconds:,.1f} s"
        for total in totals
    )


CHART_DAYS = 30


async def server_chart(ledger: Ledger, guild_id: int, *, now: datetime) -> bytes:
    """`/usage-server`'s picture: the server's images per UTC day over the last CHART_DAYS days (today
    included), stacked by scheduler; a PNG of `render.CHART_SIZE`."""
    first = day_start(now) - timedelta(days=CHART_DAYS - 1)
    days = [(first + timedelta(days=offset)).date() for offset in range(CHART_DAYS)]
    series: dict[str, list[int]] = {}
    until = day_start(now) + timedelta(days=1)
    for row in await ledger.images_per_day(guild_id, since=first, until=until):
        series.setdefault(row.scheduler, [0] * CHART_DAYS)[days.index(row.day)] += row.images
    return await asyncio.to_thread(usage_chart_png, days, series, title=f"Images per day, last {CHART_DAYS} days")


def export_csv(database_path: Path | str, out: TextIO, *, url: str | None = None) -> int:
    """Write the whole ledger as CSV (one row per job, oldest first) for operators; returns the row count.

    Opens the database read-only, so it is safe while the bot runs.
    """
    path = Path(database_path).expanduser()
    engine = _read_only_engine(path, url)
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    count = 0
    try:
        for page in _pages_of_jobs(engine, path, url):
            if count == 0:
                # Only once the ledger could be read: a failure leaves no CSV that is just a header.
                writer.writeheader()
            for job in page:
                writer.writerow(_csv_row(job))
                count += 1
    finally:
        engine.dispose()
    if count == 0:
        writer.writeheader()
    log.info("exported %d jobs from %s", count, shown(url) if url else path)
    return count


def export_limits_csv(database_path: Path | str, out: TextIO, *, url: str | None = None) -> int:
    """Write the limits history (who changed which server limit, from what to what; oldest first) as CSV.

    One row per changed field, as `/limits history` lists them; values are JSON (`null`: the operator's).
    Read-only, so it is safe while the bot runs. Returns the row count.
    """
    path = Path(database_path).expanduser()
    engine = _read_only_engine(path, url)
    query = sa.select(LimitsChange).order_by(LimitsChange.changed_at, LimitsChange.id)
    try:
        # The history is a handful of rows per server: one short read, unlike the ledger's pages.
        with Session(engine) as session:
            changes = list(session.scalars(query))
    except sa.exc.DBAPIError as error:
        raise _unreadable(path, url, f"its limits history can't be read ({error.orig})") from None
    finally:
        engine.dispose()
    writer = csv.writer(out)
    writer.writerow(LIMITS_CSV_COLUMNS)
    for change in changes:
        writer.writerow(
            (
                change.id,
                change.changed_at.isoformat(),
                change.guild_id,
                change.user_id,
                change.field,
                _cell_text(json.dumps(change.old_value, ensure_ascii=False)),
                _cell_text(json.dumps(change.new_value, ensure_ascii=False)),
            )
        )
    log.info("exported %d limit changes from %s", len(changes), shown(url) if url else path)
    return len(changes)


def _read_only_engine(path: Path, url: str | None = None) -> sa.Engine:
    """An engine on the database file opened read-only (safe while the bot runs); refuses a bad file. With a
    `url`, read-only transactions on the PostgreSQL server instead."""
    if url is not None:
        return blocking_engine(url).execution_options(postgresql_readonly=True)
    if not path.exists():
        raise FileNotFoundError(f"No database at {path}; is STEPGRID_DATABASE_PATH right?")
    check_database_file(path, writable=False)
    uri = read_only_uri(path)
    return sa.create_engine("sqlite://", creator=lambda: sqlite3.connect(uri, uri=True), poolclass=sa.pool.NullPool)


EXPORT_PAGE = 500


def _unreadable(path: Path, url: str | None, problem: str) -> DatabaseUnusable:
    if url is None:
        return DatabaseUnusable(path, problem)
    return DatabaseUnusable(shown(url), problem, setting=SETTING)


def _pages_of_jobs(engine: sa.Engine, path: Path, url: str | None = None) -> Iterator[list[JobRow]]:
    """Every job, oldest first, a page at a time, each page read in its own short transaction.

    The database has a rollback journal: a read transaction held for a whole export would keep the
    bot's writer waiting (and failing after its busy timeout) for as long as the export takes.
    """
    after: tuple[Any, str] | None = None
    while True:
        query = sa.select(JobRow).order_by(JobRow.created_at, JobRow.id).limit(EXPORT_PAGE)
        if after is not None:
            query = query.where(sa.tuple_(JobRow.created_at, JobRow.id) > sa.tuple_(*after))
        try:
            with Session(engine) as session:
                page = list(session.scalars(query))
        except sa.exc.DBAPIError as error:
            raise _unreadable(path, url, f"its jobs can't be read ({error.orig})") from None
        if not page:
            return
        yield page
        after = (page[-1].created_at, page[-1].id)


def _csv_row(job: JobRow) -> dict[str, Any]:
    params = job.params or {}
    steps = params.get("steps")
    row: dict[str, Any] = {
        "id": job.id,
        "created_at": job.created_at.isoformat(),
        "started_at": job.started_at.isoformat() if job.started_at else "",
        "finished_at": job.finished_at.isoformat() if job.finished_at else "",
        "guild_id": job.guild_id if job.guild_id is not None else "",
        "channel_id": job.channel_id,
        "user_id": job.user_id,
        "command": job.command,
        "kind": job.kind or "",
        "input_sha256": job.input_sha256 or "",
        "input_width": job.input_width or "",
        "input_height": job.input_height or "",
        "input_bytes": job.input_bytes or "",
        "origin": job.origin or "",
        "parent_job_id": job.parent_job_id or "",
        "status": job.status,
        "model": job.model or params.get("model", ""),
        "scheduler": job.scheduler,
        "images": job.images,
        "steps_requested": job.steps_requested,
        "steps_run": job.steps_run if job.steps_run is not None else "",
        "queue_seconds": f"{job.queue_seconds:.3f}" if job.queue_seconds is not None else "",
        "gpu_seconds": f"{job.gpu_seconds:.3f}" if job.gpu_seconds is not None else "",
        "attempts": job.attempts,
        "width": params.get("width", ""),
        "height": params.get("height", ""),
        "steps": ";".join(map(str, steps)) if isinstance(steps, list) else steps,
        "film_frames": steps if params.get("film") else "",
        "seed": params.get("seed", ""),
        "guidance": params.get("guidance", ""),
        "prompt": _cell_text(params.get("prompt", "")),
        "negative_prompt": _cell_text(params.get("negative_prompt", "")),
        "error": _cell_text(job.error or ""),
    }
    return row


def _cell_text(text: str) -> str:
    """Members write prompts: keep a spreadsheet from reading one as a formula."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text

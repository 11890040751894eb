"""Usage figures from the job ledger: `/usage`, `/usage server` and `stepgrid usage --csv`."""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

import sqlalchemy as sa
from sqlalchemy.orm import Session

from bot.db import Database
from bot.limits import EffectiveLimits, day_start, next_quota_reset
from bot.models import Job, JobStatus, in_guild

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
    "origin",
    "parent_job_id",
    "status",
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
    "seed",
    "guidance",
    "prompt",
    "negative_prompt",
    "error",
)


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

    @property
    def quota_remaining(self) -> int:
        return max(0, self.daily_quota - self.steps_today)


@dataclass(frozen=True)
class UserTotal:
    user_id: int
    jobs: int
    images: int
    steps: int
    gpu_seconds: float


@dataclass(frozen=True)
class SchedulerTotal:
    scheduler: str
    jobs: int
    steps: int


@dataclass(frozen=True)
class ServerUsage:
    """A server's usage over a period."""

    since: datetime | None
    until: datetime
    jobs: int
    images: int
    steps: int
    gpu_seconds: float
    members: int
    failed: int
    cancelled: int
    top_users: tuple[UserTotal, ...]
    top_schedulers: tuple[SchedulerTotal, ...]


def period_start(period: str, now: datetime) -> datetime | None:
    """The start of a `/usage server` period ("today", "7 days", "30 days", "all time")."""
    if period not in USAGE_PERIODS:
        raise ValueError(f"unknown period {period!r}; choose one of: {', '.join(USAGE_PERIODS)}")
    if period == "today":
        return day_start(now)
    span = USAGE_PERIODS[period]
    return None if span is None else now - span


def _totals() -> tuple[Any, ...]:
    """Aggregate columns shared by the queries below: jobs, images delivered, steps run, GPU seconds."""
    delivered = sa.case((Job.status == JobStatus.DONE.value, Job.images), else_=0)
    return (
        sa.func.count(Job.id),
        sa.func.coalesce(sa.func.sum(delivered), 0),
        sa.func.coalesce(sa.func.sum(Job.steps_run), 0),
        sa.func.coalesce(sa.func.sum(Job.gpu_seconds), 0.0),
    )


async def member_usage(
    db: Database, guild_id: int | None, user_id: int, limits: EffectiveLimits, *, now: datetime | None = None
) -> MemberUsage:
    """`/usage`: the member's own images, steps, GPU seconds and remaining daily quota."""
    now = now or db.clock()
    query = sa.select(*_totals()).where(in_guild(guild_id), Job.user_id == user_id)
    async with db.sessions() as session:
        jobs, images, steps, gpu_seconds = (await session.execute(query)).one()
    steps_today = await db.steps_used_today(guild_id, user_id, now=now)
    return MemberUsage(
        jobs=int(jobs),
        images=int(images),
        steps=int(steps),
        gpu_seconds=float(gpu_seconds),
        steps_today=steps_today,
        daily_quota=limits.daily_steps_per_user,
        resets_at=next_quota_reset(now),
    )


async def server_usage(
    db: Database,
    guild_id: int,
    *,
    since: datetime | None,
    until: datetime | None = None,
    top: int = 5,
) -> ServerUsage:
    """`/usage server`: totals, top members and top schedulers of jobs created in [since, until)."""
    until = until or db.clock()
    in_period = [Job.guild_id == guild_id, Job.created_at < until]
    if since is not None:
        in_period.append(Job.created_at >= since)
    jobs_col, images_col, steps_col, gpu_col = _totals()
    overall = sa.select(
        jobs_col,
        images_col,
        steps_col,
        gpu_col,
        sa.func.count(sa.distinct(Job.user_id)),
        sa.func.coalesce(sa.func.sum(sa.case((Job.status == JobStatus.FAILED.value, 1), else_=0)), 0),
        sa.func.coalesce(sa.func.sum(sa.case((Job.status == JobStatus.CANCELLED.value, 1), else_=0)), 0),
    ).where(*in_period)
    by_user = (
        sa.select(Job.user_id, jobs_col, images_col, steps_col, gpu_col)
        .where(*in_period)
        .group_by(Job.user_id)
        .order_by(steps_col.desc(), jobs_col.desc(), Job.user_id)
        .limit(top)
    )
    by_scheduler = (
        sa.select(Job.scheduler, jobs_col, steps_col)
        .where(*in_period)
        .group_by(Job.scheduler)
        .order_by(jobs_col.desc(), steps_col.desc(), Job.scheduler)
        .limit(top)
    )
    async with db.sessions() as session:
        jobs, images, steps, gpu_seconds, members, failed, cancelled = (await session.execute(overall)).one()
        users = (await session.execute(by_user)).all()
        schedulers = (await session.execute(by_scheduler)).all()
    return ServerUsage(
        since=since,
        until=until,
        jobs=int(jobs),
        images=int(images),
        steps=int(steps),
        gpu_seconds=float(gpu_seconds),
        members=int(members),
        failed=int(failed),
        cancelled=int(cancelled),
        top_users=tuple(
            UserTotal(user_id=int(u), jobs=int(j), images=int(i), steps=int(s), gpu_seconds=float(g))
            for u, j, i, s, g in users
        ),
        top_schedulers=tuple(SchedulerTotal(scheduler=str(n), jobs=int(j), steps=int(s)) for n, j, s in schedulers),
    )


def export_csv(database_path: Path | str, out: TextIO) -> int:
    """Write the whole ledger as CSV (one row per job, oldest first) for operators; returns the row count.

    Opens the database read-only, so it is safe while the bot runs.
    """
    path = Path(database_path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"No database at {path}; is STEPGRID_DATABASE_PATH right?")
    engine = sa.create_engine(f"sqlite:///file:{path}?mode=ro&uri=true", poolclass=sa.pool.NullPool)
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    count = 0
    try:
        with Session(engine) as session:
            for job in session.scalars(
                sa.select(Job).order_by(Job.created_at, Job.id).execution_options(yield_per=500)
            ):
                writer.writerow(_csv_row(job))
                count += 1
    finally:
        engine.dispose()
    log.info("exported %d jobs from %s", count, path)
    return count


def _csv_row(job: Job) -> dict[str, Any]:
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
        "origin": job.origin or "",
        "parent_job_id": job.parent_job_id or "",
        "status": job.status,
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

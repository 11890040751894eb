"""What members and servers used, read from the ledger: quota figures, totals, the usage report's figures.

The reads of the job ledger (bot.storage.ledger, whose `Ledger` has them all); each opens its own session.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from bot.limits.checks import day_start, next_quota_reset
from bot.storage.models import JOB_KINDS, UNFINISHED_STATUSES, JobRow, JobStatus, in_guild
from bot.storage.writer import DatabaseWriter


@dataclass(frozen=True)
class Totals:
    """Jobs, images delivered (grid cells count one each), steps that ran, GPU seconds."""

    jobs: int
    images: int
    steps: int
    gpu_seconds: float


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
class ModelTotal:
    model: str  # "" for jobs recorded before models were
    jobs: int
    steps: int
    gpu_seconds: float


@dataclass(frozen=True)
class LoraTotal:
    loras: str  # "pixel 0.8, lcm 1"
    jobs: int
    steps: int


@dataclass(frozen=True)
class KindTotal:
    """The jobs of one kind (text2img, img2img, vary, upscale, grid, img2img-grid): how many, images
    delivered, steps run, GPU seconds."""

    kind: str  # "" for rows a migration could not classify
    jobs: int
    images: int
    steps: int
    gpu_seconds: float


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
    top_models: tuple[ModelTotal, ...] = ()
    withheld: int = 0  # flagged pictures not posted where they were asked for
    top_loras: tuple[LoraTotal, ...] = ()  # the LoRA sets jobs used (with their weights), most steps first
    by_kind: tuple[KindTotal, ...] = ()  # text2img, img2img, vary, upscale, grids: in that order


@dataclass(frozen=True)
class HourActivity:
    """One hour's jobs (by the hour they were accepted): how many, steps run, mean wait for the GPU."""

    hour: datetime  # its start, UTC
    jobs: int
    steps: int
    mean_wait: float | None  # None: no job of that hour has started yet


@dataclass(frozen=True)
class DayImages:
    """Images a server got on one UTC day with one scheduler."""

    day: date
    scheduler: str
    images: int


class UsageQueries:
    """Reads of the job ledger: what a member used today, their running jobs, totals and usage figures."""

    database: DatabaseWriter

    async def steps_used_today(self, guild_id: int | None, user_id: int, *, now: datetime | None = None) -> int:
        """Steps counted against the member's daily quota since midnight UTC.

        Finished jobs count the steps that actually ran; queued and running jobs count the steps
        they asked for, so that queuing many jobs at once can't go past the quota.
        """
        now = now or self.database.clock()
        since, until = day_start(now), next_quota_reset(now)
        unfinished = [status.value for status in UNFINISHED_STATUSES]
        counted = sa.case(
            (JobRow.status.in_(unfinished), JobRow.steps_requested),
            else_=sa.func.coalesce(JobRow.steps_run, 0),
        )
        query = sa.select(sa.func.coalesce(sa.func.sum(counted), 0)).where(
            in_guild(guild_id), JobRow.user_id == user_id, JobRow.created_at >= since, JobRow.created_at < until
        )
        async with self.database.sessions() as session:
            return int(await session.scalar(query) or 0)

    async def active_jobs(self, guild_id: int | None, user_id: int) -> list[JobRow]:
        """The member's jobs that are queued, running or being delivered, oldest first."""
        unfinished = [status.value for status in UNFINISHED_STATUSES]
        query = (
            sa.select(JobRow)
            .where(in_guild(guild_id), JobRow.user_id == user_id, JobRow.status.in_(unfinished))
            .order_by(JobRow.created_at, JobRow.id)
        )
        async with self.database.sessions() as session:
            return list(await session.scalars(query))

    async def member_totals(self, guild_id: int | None, user_id: int) -> Totals:
        """The member's jobs, images delivered, steps run and GPU seconds in one server, all time."""
        query = sa.select(*_totals()).where(in_guild(guild_id), JobRow.user_id == user_id)
        async with self.database.sessions() as session:
            jobs, images, steps, gpu_seconds = (await session.execute(query)).one()
        return Totals(jobs=int(jobs), images=int(images), steps=int(steps), gpu_seconds=float(gpu_seconds))

    async def kind_totals(
        self,
        guild_id: int | None,
        *,
        user_id: int | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> tuple[KindTotal, ...]:
        """Jobs, images, steps and GPU seconds by kind of job in one server (of one member), over [since, until)."""
        where = [in_guild(guild_id)]
        if user_id is not None:
            where.append(JobRow.user_id == user_id)
        if since is not None:
            where.append(JobRow.created_at >= since)
        if until is not None:
            where.append(JobRow.created_at < until)
        kind = sa.func.coalesce(JobRow.kind, "")
        query = sa.select(kind, *_totals()).where(*where).group_by(kind)
        async with self.database.sessions() as session:
            rows = (await session.execute(query)).all()
        order = {name: rank for rank, name in enumerate(JOB_KINDS)}
        totals = (
            KindTotal(kind=str(k), jobs=int(j), images=int(i), steps=int(s), gpu_seconds=float(g))
            for k, j, i, s, g in rows
        )
        return tuple(sorted(totals, key=lambda total: (order.get(total.kind, len(order)), total.kind)))

    async def server_usage(
        self,
        guild_id: int,
        *,
        since: datetime | None,
        until: datetime | None = None,
        top: int = 5,
    ) -> ServerUsage:
        """`/usage server`: totals, top members and top schedulers of jobs created in [since, until)."""
        until = until or self.database.clock()
        in_period = [JobRow.guild_id == guild_id, JobRow.created_at < until]
        if since is not None:
            in_period.append(JobRow.created_at >= since)
        jobs_col, images_col, steps_col, gpu_col = _totals()
        overall = sa.select(
            jobs_col,
            images_col,
            steps_col,
            gpu_col,
            sa.func.count(sa.distinct(JobRow.user_id)),
            sa.func.coalesce(sa.func.sum(sa.case((JobRow.status == JobStatus.FAILED.value, 1), else_=0)), 0),
            sa.func.coalesce(sa.func.sum(sa.case((JobRow.status == JobStatus.CANCELLED.value, 1), else_=0)), 0),
            sa.func.coalesce(sa.func.sum(JobRow.images_withheld), 0),
        ).where(*in_period)
        by_user = (
            sa.select(JobRow.user_id, jobs_col, images_col, steps_col, gpu_col)
            .where(*in_period)
            .group_by(JobRow.user_id)
            .order_by(steps_col.desc(), jobs_col.desc(), JobRow.user_id)
            .limit(top)
        )
        by_scheduler = sa.select(JobRow.scheduler, jobs_col, steps_col).where(*in_period).group_by(JobRow.scheduler)
        model_col = sa.func.coalesce(JobRow.model, "")
        by_model = (
            sa.select(model_col, jobs_col, steps_col, gpu_col)
            .where(*in_period)
            .group_by(model_col)
            .order_by(steps_col.desc(), jobs_col.desc(), model_col)
            .limit(top)
        )
        by_loras = (
            sa.select(JobRow.loras, jobs_col, steps_col)
            .where(*in_period, JobRow.loras.is_not(None))
            .group_by(JobRow.loras)
            .order_by(steps_col.desc(), jobs_col.desc(), JobRow.loras)
            .limit(top)
        )
        async with self.database.sessions() as session:
            jobs, images, steps, gpu_seconds, members, failed, cancelled, withheld = (
                await session.execute(overall)
            ).one()
            users = (await session.execute(by_user)).all()
            schedulers = (await session.execute(by_scheduler)).all()
            models = (await session.execute(by_model)).all()
            loras = (await session.execute(by_loras)).all()
        by_kind = await self.kind_totals(guild_id, since=since, until=until)
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
            withheld=int(withheld),
            top_users=tuple(
                UserTotal(user_id=int(u), jobs=int(j), images=int(i), steps=int(s), gpu_seconds=float(g))
                for u, j, i, s, g in users
            ),
            top_schedulers=_top_schedulers(schedulers, top),
            top_models=tuple(
                ModelTotal(model=str(m), jobs=int(j), steps=int(s), gpu_seconds=float(g)) for m, j, s, g in models
            ),
            top_loras=tuple(LoraTotal(loras=str(n), jobs=int(j), steps=int(s)) for n, j, s in loras),
            by_kind=by_kind,
        )

    async def images_withheld(self, *, since: datetime, until: datetime) -> int:
        """Flagged pictures withheld from the jobs accepted in [since, until), every server (counts, never images)."""
        query = sa.select(sa.func.coalesce(sa.func.sum(JobRow.images_withheld), 0)).where(
            JobRow.created_at >= since, JobRow.created_at < until
        )
        async with self.database.sessions() as session:
            return int((await session.execute(query)).scalar_one() or 0)

    async def hourly_activity(self, *, since: datetime, until: datetime) -> list[HourActivity]:
        """Every server's jobs accepted in [since, until), by hour (hours without jobs left out)."""
        hour = HourStart(JobRow.created_at)
        query = (
            sa.select(
                hour,
                sa.func.count(JobRow.id),
                sa.func.coalesce(sa.func.sum(JobRow.steps_run), 0),
                sa.func.avg(JobRow.queue_seconds),
            )
            .where(JobRow.created_at >= since, JobRow.created_at < until)
            .group_by(hour)
            .order_by(hour)
        )
        async with self.database.sessions() as session:
            rows = (await session.execute(query)).all()
        return [
            HourActivity(
                hour=datetime.fromisoformat(str(start)).replace(tzinfo=UTC),
                jobs=int(jobs),
                steps=int(steps),
                mean_wait=None if wait is None else float(wait),
            )
            for start, jobs, steps, wait in rows
        ]

    async def images_per_day(self, guild_id: int, *, since: datetime, until: datetime) -> list[DayImages]:
        """A server's delivered images per UTC day and scheduler, of jobs accepted in [since, until)."""
        day = sa.func.date(JobRow.created_at)
        images = sa.func.sum(JobRow.images)
        query = (
            sa.select(day, JobRow.scheduler, images)
            .where(
                JobRow.guild_id == guild_id,
                JobRow.status == JobStatus.DONE.value,
                JobRow.created_at >= since,
                JobRow.created_at < until,
            )
            .group_by(day, JobRow.scheduler)
            .order_by(day, JobRow.scheduler)
        )
        async with self.database.sessions() as session:
            rows = (await session.execute(query)).all()
        # Each row of a scheduler grid has the same number of cells: each scheduler gets its share.
        totals: dict[tuple[date, str], int] = defaultdict(int)
        for day_text, names, count in rows:
            schedulers = recorded_schedulers(names)
            for scheduler in schedulers:
                totals[date.fromisoformat(str(day_text)), scheduler] += int(count) // len(schedulers)
        return [DayImages(day_, name, count) for (day_, name), count in sorted(totals.items())]


class HourStart(FunctionElement[str]):
    """The start of a timestamp's hour as text, "YYYY-MM-DD HH:00:00", on SQLite and PostgreSQL alike."""

    type = sa.String()
    name = "hour_start"
    inherit_cache = True


@compiles(HourStart, "sqlite")
def _hour_start_sqlite(element: HourStart, compiler: Any, **kw: Any) -> str:
    # Constants as literals, not parameters: the expression is grouped by, and must read the same twice.
    return f"strftime('%Y-%m-%d %H:00:00', {compiler.process(element.clauses, **kw)})"


@compiles(HourStart, "postgresql")
def _hour_start_postgresql(element: HourStart, compiler: Any, **kw: Any) -> str:
    return f"to_char(date_trunc('hour', {compiler.process(element.clauses, **kw)}), 'YYYY-MM-DD HH24:00:00')"


def _totals() -> tuple[Any, ...]:
    """Aggregate columns shared by the queries below: jobs, images delivered, steps run, GPU seconds."""
    delivered = sa.case((JobRow.status == JobStatus.DONE.value, JobRow.images), else_=0)
    return (
        sa.func.count(JobRow.id),
        sa.func.coalesce(sa.func.sum(delivered), 0),
        sa.func.coalesce(sa.func.sum(JobRow.steps_run), 0),
        sa.func.coalesce(sa.func.sum(JobRow.gpu_seconds), 0.0),
    )


def recorded_schedulers(names: object) -> list[str]:
    """The schedulers of a ledger row: one, or a scheduler grid's rows, which are recorded joined
    ("Euler a, DDIM", as `CompareSchedulersRequest.scheduler` gives them; no A1111 name has a comma)."""
    return str(names).split(", ")


def _top_schedulers(rows: Sequence[Any], top: int) -> tuple[SchedulerTotal, ...]:
    """Jobs and steps per scheduler, most jobs first. A scheduler grid counts as a job of each of its
    schedulers, with its share of the steps (every row has the same step counts)."""
    totals: dict[str, tuple[int, int]] = {}
    for names, jobs, steps in rows:
        schedulers = recorded_schedulers(names)
        for name in schedulers:
            seen_jobs, seen_steps = totals.get(name, (0, 0))
            totals[name] = (seen_jobs + int(jobs), seen_steps + int(steps) // len(schedulers))
    ranked = sorted(totals.items(), key=lambda item: (-item[1][0], -item[1][1], item[0]))[:top]
    return tuple(SchedulerTotal(scheduler=name, jobs=jobs, steps=steps) for name, (jobs, steps) in ranked)

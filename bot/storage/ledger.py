"""The job ledger: one row per accepted job from queued to finished, and the figures usage reads.

Writes go through the database's one writer task; reads open their own sessions.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from bot.limits.checks import day_start, next_quota_reset
from bot.storage.inputs import InputImages
from bot.storage.models import (
    FINISHED_STATUSES,
    INPUT_NOTES,
    JOB_KINDS,
    STEPS_NOTE,
    UNBUILT_OPTIONS,
    UNFINISHED_STATUSES,
    JobRow,
    JobStatus,
    command_of,
    in_guild,
    loras_label,
    request_to_params,
)
from bot.storage.writer import DatabaseWriter, RefusedWrite
from inference.protocol import JobFailed, JobResult
from inference.requests import Request, total_steps

log = logging.getLogger(__name__)


class LedgerJobMissing(RefusedWrite, LookupError):
    """No job with that id in the ledger."""


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


class Ledger:
    """Jobs in the database: record, move through their statuses, and count what members used."""

    def __init__(self, database: DatabaseWriter, inputs: InputImages | None = None, *, owner: str = "stepgrid") -> None:
        self.database = database
        self.inputs = inputs
        self.owner = owner  # this bot process's id: the jobs it records are its own to answer

    async def record_job(
        self,
        request: Request,
        *,
        user_id: int,
        channel_id: int,
        guild_id: int | None,
        job_id: str | None = None,
        application_id: int | None = None,
        interaction_token: str | None = None,
        message_id: int | None = None,
        origin: str | None = None,
        parent_job_id: str | None = None,
        unbuilt_options: dict[str, Any] | None = None,
        notes: Sequence[str] = (),
        steps_note: str = "",
    ) -> JobRow:
        """Record an accepted request as a queued job (before it is submitted to the queue).

        `origin` says what started it (the command, or a button action on `parent_job_id`'s result).
        With `unbuilt_options` (what the member typed, while no model was known), `request` is
        provisional: `set_request` replaces it once the job is built for its model. `notes` say what was
        changed in its input image (kept in its params, so a restarted bot still says it with the result);
        `steps_note` where its steps came from (kept the same way).
        """
        job_id = job_id or uuid.uuid4().hex
        if request.image:
            if self.inputs is None:
                raise ValueError("this ledger keeps no input images")
            # On disk before the row exists: a row always finds its image after a crash.
            await asyncio.to_thread(self.inputs.save, job_id, request.image)
        params = request_to_params(request)
        if unbuilt_options is not None:
            params[UNBUILT_OPTIONS] = unbuilt_options
        if notes:
            params[INPUT_NOTES] = list(notes)
        if steps_note:
            params[STEPS_NOTE] = steps_note
        job = JobRow(
            id=job_id,
            guild_id=guild_id,
            channel_id=channel_id,
            user_id=user_id,
            command=command_of(request),
            params=params,
            scheduler=request.scheduler,
            model=request.model or None,
            loras=loras_label(request),
            images=len(request.lane_steps),
            steps_requested=total_steps(request),
            status=JobStatus.QUEUED.value,
            attempts=0,
            created_at=self.database.clock(),
            application_id=application_id,
            interaction_token=interaction_token,
            message_id=message_id,
            message_channel_id=channel_id if message_id is not None else None,
            origin=origin or command_of(request),
            parent_job_id=parent_job_id,
            bot_id=self.owner,
        )
        job.set_kind_and_input(request, job.origin)

        async def insert(session: AsyncSession) -> JobRow:
            session.add(job)
            return job

        return await self.database.write(insert)

    async def set_request(self, job_id: str, request: Request, *, steps_note: str = "") -> bool:
        """The job's request as built for its model, replacing the provisional one (and its unbuilt options),
        with where its steps came from. False (and no change) if the job already finished."""

        def change(job: JobRow) -> None:
            notes = job.params.get(INPUT_NOTES)
            job.command = command_of(request)
            job.params = (
                request_to_params(request)
                | ({INPUT_NOTES: notes} if notes else {})
                | ({STEPS_NOTE: steps_note} if steps_note else {})
            )
            job.set_kind_and_input(request, job.origin)
            job.scheduler = request.scheduler
            job.model = request.model or None
            job.images = len(request.lane_steps)
            job.steps_requested = total_steps(request)

        return await self._transition(job_id, change)

    async def mark_running(self, job_id: str) -> bool:
        """queued → running; counts an attempt. False (and no change) if the job already finished.

        Call it once per bot run that starts the job: `attempts` counts how many runs of the bot
        started it, which start-up recovery reads as how many times the bot went down during it.
        """
        now = self.database.clock()

        def change(job: JobRow) -> None:
            job.status = JobStatus.RUNNING.value
            job.attempts += 1
            if job.started_at is None:
                job.started_at = now

        return await self._transition(job_id, change)

    async def mark_delivering(self, job_id: str, result: JobResult, *, withheld: int = 0) -> bool:
        """running → delivering: the result's figures, written before it is uploaded.

        If the bot dies before `mark_finished`, start-up recovery finds the row here and looks at the
        job's message to tell whether the upload reached Discord (then the job is done, not run again).
        """

        def change(job: JobRow) -> None:
            job.status = JobStatus.DELIVERING.value
            job.gpu_seconds = result.gpu_seconds
            job.queue_seconds = result.queue_seconds
            job.steps_run = result.steps_run
            job.images_withheld = withheld or None

        return await self._transition(job_id, change)

    async def mark_delivered(self, job_id: str) -> bool:
        """Finish as done a job whose result start-up recovery found already posted.

        Keeps the figures `mark_delivering` wrote; without them (the write before the upload failed)
        the steps it asked for are counted, since they all ran.
        """
        now = self.database.clock()

        def change(job: JobRow) -> None:
            job.status = JobStatus.DONE.value
            job.finished_at = now
            job.interaction_token = None
            if job.steps_run is None:
                job.steps_run = job.steps_requested

        delivered = await self._transition(job_id, change)
        self._forget_input(job_id)
        return delivered

    async def mark_interrupted(self, job_id: str) -> bool:
        """running → queued again by a planned stop (a deploy): the run that started it is not counted as
        an attempt, since the bot did not go down because of this job."""

        def change(job: JobRow) -> None:
            if job.status == JobStatus.RUNNING.value:
                job.attempts = max(0, job.attempts - 1)
            job.status = JobStatus.QUEUED.value

        return await self._transition(job_id, change)

    async def mark_queued(self, job_id: str) -> bool:
        """running → queued again, e.g. re-queued at start-up after a crash; keeps its attempts."""
        return await self._transition(job_id, lambda job: setattr(job, "status", JobStatus.QUEUED.value))

    async def mark_done(self, job_id: str, *, gpu_seconds: float, queue_seconds: float, steps_run: int) -> bool:
        """Finished with a result. False (and no change) if the job had already finished."""
        return await self._finish(
            job_id, JobStatus.DONE, gpu_seconds=gpu_seconds, queue_seconds=queue_seconds, steps_run=steps_run
        )

    async def mark_finished(self, job_id: str, outcome: JobResult | JobFailed) -> bool:
        """Record a job's final event: done, failed or cancelled, with what it used (steps, GPU and queue time).

        Failed and cancelled jobs keep the steps they ran, so a job cancelled after 149 of 150 steps
        counts 149 toward the daily quota. False (and no change) if the job had already finished.
        """
        figures: dict[str, Any] = {
            "gpu_seconds": outcome.gpu_seconds,
            "queue_seconds": outcome.queue_seconds,
            "steps_run": outcome.steps_run,
        }
        if isinstance(outcome, JobResult):
            return await self._finish(job_id, JobStatus.DONE, **figures)
        if outcome.cancelled:
            return await self._finish(job_id, JobStatus.CANCELLED, **figures)
        return await self._finish(job_id, JobStatus.FAILED, error=outcome.message, **figures)

    async def get_job(self, job_id: str) -> JobRow | None:
        """The job with that id, or None."""
        async with self.database.sessions() as session:
            return await session.get(JobRow, job_id)

    async def unfinished_jobs(self) -> list[JobRow]:
        """This bot's jobs left queued or running (by a crash, at start-up), oldest first."""
        statuses = [status.value for status in UNFINISHED_STATUSES]
        async with self.database.sessions() as session:
            rows = await session.scalars(
                sa.select(JobRow)
                .where(JobRow.status.in_(statuses), JobRow.bot_id == self.owner)
                .order_by(JobRow.created_at, JobRow.id)
            )
            return list(rows)

    async def adopt_jobs(self, dead_bot: str) -> list[JobRow]:
        """Make a dead bot process's unfinished jobs this bot's (one UPDATE: each row moves once), oldest first."""
        statuses = [status.value for status in UNFINISHED_STATUSES]

        async def adopt(session: AsyncSession) -> list[JobRow]:
            rows = await session.scalars(
                sa.update(JobRow)
                .where(JobRow.status.in_(statuses), JobRow.bot_id == dead_bot)
                .values(bot_id=self.owner)
                .returning(JobRow)
                .execution_options(synchronize_session=False)
            )
            return sorted(rows, key=lambda row: (row.created_at, row.id))

        return await self.database.write(adopt)

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

    async def _transition(self, job_id: str, change: Callable[[JobRow], None]) -> bool:
        async def operation(session: AsyncSession) -> bool:
            job = await _load(session, job_id)
            if job.status in FINISHED_STATUSES:
                log.info(
                    "job %s is already %s; ignoring a late status change", job_id, job.status, extra={"job_id": job_id}
                )
                return False
            change(job)
            return True

        return await self.database.write(operation)

    async def _finish(self, job_id: str, status: JobStatus, error: str | None = None, **figures: Any) -> bool:
        now = self.database.clock()

        def change(job: JobRow) -> None:
            job.status = status.value
            job.finished_at = now
            # Only start-up recovery answers through the stored interaction, and only unfinished
            # jobs; buttons arrive as new interactions. A finished job keeps no token (privacy).
            job.interaction_token = None
            if error is not None:
                job.error = error
            for name, value in figures.items():
                if value is not None:
                    setattr(job, name, value)

        finished = await self._transition(job_id, change)
        self._forget_input(job_id)
        return finished

    def _forget_input(self, job_id: str) -> None:
        """A finished job's input image is no longer needed: nothing runs it again."""
        if self.inputs is not None:
            self.inputs.remove(job_id)

    async def _update(self, job_id: str, change: Callable[[JobRow], None]) -> None:
        async def operation(session: AsyncSession) -> None:
            change(await _load(session, job_id))

        await self.database.write(operation)


async def _load(session: AsyncSession, job_id: str) -> JobRow:
    # FOR UPDATE (PostgreSQL; SQLite has one writer and ignores it): another process changing the same
    # job waits for this transaction, then sees its outcome, so a finished job is finished exactly once.
    job = await session.get(JobRow, job_id, with_for_update=True, populate_existing=True)
    if job is None:
        raise LedgerJobMissing(job_id)
    return job


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

"""The job ledger: one row per accepted job from queued to finished, and the figures usage reads.

Writes go through the database's one writer task; reads open their own sessions. The reads of what
members and servers used (quota figures, totals, the usage report's figures) are in bot.storage.usage,
which `Ledger` extends.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from bot.storage.inputs import InputImages
from bot.storage.models import (
    FINISHED_STATUSES,
    INPUT_NOTES,
    STEPS_NOTE,
    UNBUILT_OPTIONS,
    UNFINISHED_STATUSES,
    JobRow,
    JobStatus,
    command_of,
    loras_label,
    request_to_params,
)
from bot.storage.usage import UsageQueries
from bot.storage.writer import DatabaseWriter, RefusedWrite
from inference.protocol import JobFailed, JobResult
from inference.requests import Request, total_steps

log = logging.getLogger(__name__)


class LedgerJobMissing(RefusedWrite, LookupError):
    """No job with that id in the ledger."""


class Ledger(UsageQueries):
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

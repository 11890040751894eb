"""Drive one job from an interaction to its answer; shared by the commands and the buttons.

`JobService.start` checks a request, queues it and defers the interaction; a task per job then
follows the queue's events, edits one message (queue position, then "step k/N" with a preview,
at most once per `edit_interval`) and ends it with the result or a short failure note. A job
accepted is a job answered: every path out of the driver leaves the user a message.

A command sent while the worker is still loading can't have its model's defaults yet (its native
size, steps, scheduler): the job is recorded with what the member typed, held in the bot until the
models are known, then built and checked as if it had come then, and queued in the order accepted.

The service is made of parts, one concern each, sharing the state in bot.jobs.core: admission
(bot.jobs.admission), the buttons (bot.jobs.button_actions), driving a job (bot.jobs.driver); here, the
hooks start-up recovery uses (bot.jobs.recovery) and the shutdown.
"""

from __future__ import annotations

import asyncio
import logging

import discord

from bot.jobs.button_actions import ButtonActions
from bot.jobs.driver import Driving
from bot.replies.messages import failure_text
from bot.replies.reply import StoredInteractionMessage
from bot.storage.job_store import JobRecord
from inference.logs import job_context
from inference.protocol import JobFailed
from inference.queues.base import QueueFull, WorkerUnavailable
from inference.requests import InvalidRequest
from inference.validation import validate

log = logging.getLogger(__name__)


class JobService(ButtonActions, Driving):
    """Accepts requests from interactions and drives each job to its answer."""

    def resume(self, client: discord.Client, record: JobRecord, *, token_age: float) -> asyncio.Task[None]:
        """Queue a job accepted before a restart again and drive it to its answer.

        The answer edits the job's original message while its interaction token (`token_age`
        seconds old) lives, else it goes to the job's channel with a mention. If the queue refuses
        the job, the user is told it failed.
        """
        target = StoredInteractionMessage(
            client, record, deadline=self._clock() + self.token_lifetime - token_age, clock=self._clock
        )
        if record.options is not None:  # accepted while the model loaded: built once the models are known
            log.info("job %s waits for the models again after a restart", record.job_id)
            return self._spawn_driver(record, target)
        try:
            validate(record.request)  # what this version accepts may have changed since the job was
            self.queue.submit(record.request, user_id=str(record.user_id), job_id=record.job_id)
        except (QueueFull, WorkerUnavailable, InvalidRequest) as error:
            reason = "the model failed to load" if isinstance(error, WorkerUnavailable) else str(error)
            return self.answer_failed(client, record, f"it could not be queued again after a restart ({reason})",
                                      token_age=token_age)  # fmt: skip
        log.info("job %s re-queued after a restart", record.job_id, extra={"job_id": record.job_id})
        return self._spawn_driver(record, target)

    async def already_delivered(self, client: discord.Client, record: JobRecord, *, token_age: float) -> bool | None:
        """Whether the result of a job left unfinished by a restart is already on its message (None: can't tell)."""
        target = StoredInteractionMessage(
            client, record, deadline=self._clock() + self.token_lifetime - token_age, clock=self._clock
        )
        return await target.shows_result()

    def answer_failed(
        self, client: discord.Client, record: JobRecord, reason: str, *, token_age: float
    ) -> asyncio.Task[None]:
        """Record a job accepted before a restart as failed and tell its owner why."""
        target = StoredInteractionMessage(
            client, record, deadline=self._clock() + self.token_lifetime - token_age, clock=self._clock
        )
        failure = JobFailed(record.job_id, reason)

        async def answer() -> None:
            await self.store.mark_finished(record.job_id, failure)
            log.info("job %s answered as failed after a restart: %s", record.job_id, reason)
            await self._quietly(target.withdraw(failure_text(failure, record.request)))

        with job_context(record.job_id):
            task = asyncio.create_task(answer(), name=f"stepgrid-job-{record.job_id}")
        return self._track(record.job_id, task)

    def stop_accepting(self) -> None:
        """A planned shutdown starts: new jobs are refused, saying the bot is restarting."""
        self._accepting = False

    def begin_shutdown(self, *, keep_queued: bool) -> None:
        """The queue is about to close (after its grace period): call just before closing it.

        With `keep_queued`, jobs the queue fails because it is closing (waiting, or still running
        when the grace period ended) stay queued in the ledger for start-up recovery to run, and
        their owners are told so. Only for a store that outlives the process (the database).
        """
        self._accepting = False
        self._keep_queued = keep_queued
        self._stopping = True
        self._wake_held()

    async def close(self, grace: float = 10.0) -> None:
        """Wait for the drivers to answer their jobs (close the queue first), then cancel the rest."""
        tasks = list(self._tasks.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self._outcomes.stop_retrying()
        if self._loading_watch is not None:
            self._loading_watch.cancel()
            await asyncio.gather(self._loading_watch, return_exceptions=True)
        await self.record_pending_outcomes()

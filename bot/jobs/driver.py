"""Driving one job from the queue's events to its answer.

A task per job follows the queue's events, edits one message (queue position, then "step k/N" with a
preview, at most once per `edit_interval`) and ends it with the result or a short failure note. A job
accepted is a job answered: every path out of the driver leaves the user a message. A job accepted
before the models were known is held here until they are, then built and queued in the order accepted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging

from bot.errors import UserFacingError, new_reference
from bot.jobs.core import ServiceCore
from bot.pictures.remembered_rows import remembered_rows, settle_step
from bot.replies.messages import (
    MessageUpdate,
    ProgressState,
    encode_result_files,
    failure_text,
    progress_message,
    result_message,
)
from bot.replies.reply import JobMessage
from bot.replies.screening import Screening
from bot.replies.throttle import ThrottledEditor
from bot.storage.job_store import JobRecord
from bot.storage.models import command_of
from bot.storage.sweet_spots import SettledRow
from inference.logs import job_context
from inference.protocol import JobFailed, JobProgress, JobResult, JobStarted
from inference.requests import MAX_STEPS, GenerateRequest

log = logging.getLogger(__name__)

RESTART_NOTE = "Stepgrid is restarting. Your job keeps its place in the queue and runs once it is back."


class Driving(ServiceCore):
    """Drives each job to its answer: progress, the result or the failure, and the ledger's record of it."""

    def _spawn_driver(self, record: JobRecord, target: JobMessage) -> asyncio.Task[None]:
        if record.options is not None:
            self._held.append(record.job_id)  # here, so that jobs keep the order they were accepted in
            self._watch_loading()
        with job_context(record.job_id):  # the task inherits it: every line it logs names the job
            task = asyncio.create_task(self._drive(record, target), name=f"stepgrid-job-{record.job_id}")
        if record.options is not None:  # also when it is cancelled before it ever ran
            task.add_done_callback(lambda _: self._unhold(record.job_id))
        return self._track(record.job_id, task)

    async def _drive(self, record: JobRecord, target: JobMessage) -> None:
        job_id = record.job_id
        editor: ThrottledEditor[MessageUpdate] = ThrottledEditor(
            target.show, interval=self.edit_interval, clock=self._clock, sleep=self._sleep
        )
        state = ProgressState(loading=not self.queue.ready)
        marked_running = False
        screening = await self._screening(record, target)
        try:
            if record.options is not None:
                built = await self._build_when_loaded(record, target, editor, state)
                if built is None:
                    return
                record = built
            position = self.queue.position(job_id)
            if position is not None:
                state.position = position
            state.eta = self.queue.estimate(job_id)
            editor.push(progress_message(record, state))
            async for event in self.queue.events(job_id):
                if isinstance(event, JobResult):
                    await self._finish_with_result(record, event, target, editor, await self._screening(record, target))
                    return
                if isinstance(event, JobFailed):
                    if self._keep_queued and not event.cancelled:
                        await self._leave_queued(record, state, editor, started=marked_running)
                    else:
                        # A worker that crashed can't say how many steps ran; the bot saw them.
                        failure = dataclasses.replace(event, steps_run=max(event.steps_run, state.steps_seen))
                        await self._finish_with_failure(record, failure, target, editor)
                    return
                if isinstance(event, JobStarted) and not marked_running:
                    # Once per driver: the queue's own retries (worker crash, out of memory) start
                    # the job again, but the ledger's attempts count the bot runs that started it.
                    await self.store.mark_running(job_id)
                    marked_running = True
                if isinstance(event, JobProgress) and screening.hides_preview(event):
                    state.stop_previews()
                elif isinstance(event, JobProgress) and screening.spoils_preview(event):
                    state.preview_spoiler = True
                state.apply(event)
                if isinstance(event, JobProgress):
                    self._steps[job_id] = (event.job_step, event.job_total)
                state.eta = self.queue.estimate(job_id)
                editor.push(progress_message(record, state))
            raise RuntimeError(f"the event stream of job {job_id} ended without a result")
        except asyncio.CancelledError:
            self.queue.cancel(job_id)
            await editor.stop()
            raise
        except Exception:
            reference = new_reference()
            log.exception("job %s failed in the bot (ref %s)", job_id, reference)
            self.queue.cancel(job_id)
            await editor.stop()
            if job_id not in self._outcomes:
                failure = JobFailed(job_id, f"bot error (ref {reference})", steps_run=state.steps_seen)
                self._count(record, failure)
                await self._quietly(self.store.mark_finished(job_id, failure))
            await self._quietly(
                target.withdraw(f"Something went wrong on my side (ref `{reference}`). It has been logged; try again.")
            )
        finally:
            self._cancelled_by.pop(job_id, None)
            self._steps.pop(job_id, None)

    async def _screening(self, record: JobRecord, target: JobMessage) -> Screening:
        """How flagged pictures are handled where the job's message is, under its server's choice now; if the
        server's limits can't be read, flagged pictures are withheld."""
        try:
            limits = await self.limits(record.guild_id)
        except Exception:
            log.warning("job %s: could not read its server's limits; flagged pictures are withheld", record.job_id,
                        exc_info=True)  # fmt: skip
            return Screening(posts_flagged=False)
        posts = limits.posts_flagged(age_restricted=target.age_restricted)
        return Screening(posts_flagged=posts, spoiler=limits.spoils_flagged)

    async def _build_when_loaded(
        self, record: JobRecord, target: JobMessage, editor: ThrottledEditor[MessageUpdate], state: ProgressState
    ) -> JobRecord | None:
        """Hold a job accepted before the models were known until they are, then build it with its model's
        defaults, check it as if it came now and queue it (held jobs go in the order accepted).

        The record as queued, or None once the job is answered here: cancelled, refused (on its message,
        saying what to change), or left queued in the ledger by a shutdown.
        """
        job_id = record.job_id
        state.loading = True
        try:
            while True:
                wakeup = self._held_wakeup
                if job_id in self._cancelled_by:
                    await self._finish_with_failure(record, JobFailed.cancellation(job_id), target, editor)
                    return None
                if self._stopping:
                    if self._keep_queued:  # the row keeps its options: the next start builds it
                        await self._leave_queued(record, state, editor, started=False)
                    else:
                        failure = JobFailed(job_id, "Stepgrid is shutting down; this job did not run.", retryable=True)
                        await self._finish_with_failure(record, failure, target, editor)
                    return None
                if self._loading_over and self._held[0] == job_id:
                    break
                position = self._held.index(job_id) + 1
                if position != state.position:
                    state.position = position
                    editor.push(progress_message(record, state))
                await wakeup.wait()
            try:
                request, steps_note = await self._built(record)
                await self.store.set_request(job_id, request, steps_note=steps_note)
                record = dataclasses.replace(record, request=request, options=None, steps_note=steps_note)
                self._submit(record)
            except UserFacingError as refusal:
                await self._finish_with_failure(record, JobFailed(job_id, str(refusal)), target, editor)
                return None
            state.position, state.loading = None, not self.queue.ready
            log.info("job %s built for model %s and queued", job_id, request.model or "(default)")
            return record
        finally:
            self._unhold(job_id)

    async def _finish_with_result(
        self,
        record: JobRecord,
        result: JobResult,
        target: JobMessage,
        editor: ThrottledEditor[MessageUpdate],
        screening: Screening,
    ) -> None:
        rendered = await asyncio.to_thread(
            encode_result_files, record, result, limit=target.attachment_limit, screening=screening
        )
        await self._keep_cells(record, result, screening)
        if rendered.withheld:
            log.info("job %s: %d flagged picture(s) withheld in this channel", record.job_id, rendered.withheld)
            self.metrics.images_withheld.inc(rendered.withheld)
        # Recorded before the upload: if the bot dies between the upload and the last write, the
        # next start finds the row "delivering", sees the result on the job's message and does not
        # run the job a second time. A ledger that refuses this write doesn't hold the result back.
        try:
            await self.store.mark_delivering(record.job_id, result, withheld=rendered.withheld)
        except Exception:
            log.exception("job %s: the ledger could not record its result before the upload", record.job_id)
        # Before the upload too: once a member sees the grid, `/sweet-spots` and learned steps count it.
        await self._remember_settle_points(record, result, screening)
        message = result_message(record, result, rendered, max_steps=await self._step_ceiling(record))
        await editor.finish(message)
        # Delivered: from here on a failure must not withdraw the result the user already has.
        self._count(record, result, model=result.model)
        await self._outcomes.record(record.job_id, result)
        if record.job_id in self._outcomes:
            return
        log.info("job %s done: %d image(s), %.2f GPU s", record.job_id, len(result.images), result.gpu_seconds)

    async def _keep_cells(self, record: JobRecord, result: JobResult, screening: Screening) -> None:
        """A grid's cells as the worker made them, kept before the grid is posted so that its cell menus
        (Vary, Upscale) start from the cell itself; withheld cells are not kept. The result goes out anyway
        if they can't be kept."""
        if isinstance(record.request, GenerateRequest):
            return
        withheld = screening.withheld(result)
        cells = {index: image.png for index, image in enumerate(result.images) if index not in withheld}
        try:
            await self.store.keep_cells(record.job_id, cells)
        except Exception:
            log.exception("job %s: could not keep its grid's cells", record.job_id, extra={"job_id": record.job_id})

    async def _remember_settle_points(self, record: JobRecord, result: JobResult, screening: Screening) -> None:
        """Where each row of a delivered step-ladder grid settled, into its server's memory (rows with a withheld
        cell left out: they were measured on a tile). A failure here is logged; the member has the result."""
        model = result.model or record.request.model
        try:
            rows = await asyncio.to_thread(remembered_rows, record.request, result.images, screening.withheld(result))
            if rows and model:
                settled = [SettledRow(index, row.scheduler, row.steps, settle_step(row)) for index, row in rows]
                await self.store.remember_settle_points(record, model=model, rows=settled)
        except Exception:
            log.exception("job %s: could not remember where its grid settled", record.job_id)

    async def _step_ceiling(self, record: JobRecord) -> int:
        """The most steps the job's model may run in its server now: where the result's "more" button stops."""
        try:
            limits = await self.limits(record.guild_id)
        except Exception:  # the result matters more than one button's label
            log.warning("job %s: could not read its server's limits", record.job_id, exc_info=True)
            return MAX_STEPS
        return limits.max_steps_for(record.request.model)

    async def _leave_queued(
        self, record: JobRecord, state: ProgressState, editor: ThrottledEditor[MessageUpdate], *, started: bool
    ) -> None:
        # The ledger row stays (or is again) queued: start-up recovery runs the job again and edits this message.
        if started:
            await self._quietly(self.store.mark_interrupted(record.job_id))
        log.info("job %s stays queued in the ledger for the next start", record.job_id)
        note = dataclasses.replace(progress_message(record, state), content=RESTART_NOTE, view=None)
        await self._quietly(editor.finish(note))

    async def _finish_with_failure(
        self, record: JobRecord, failure: JobFailed, target: JobMessage, editor: ThrottledEditor[MessageUpdate]
    ) -> None:
        await editor.stop()
        self._count(record, failure)
        await self._outcomes.record(record.job_id, failure)
        if failure.cancelled:
            cancelled_by = self._cancelled_by.get(record.job_id)
            # The owner who clicked Cancel was already told; anyone else hears it here.
            if cancelled_by == record.user_id:
                await target.withdraw(None)
            else:
                await target.withdraw(
                    failure_text(failure, record.request, cancelled_by_other=cancelled_by is not None)
                )
        else:
            log.info("job %s failed: %s", record.job_id, failure.message)
            await target.withdraw(failure_text(failure, record.request))

    def _count(self, record: JobRecord, outcome: JobResult | JobFailed, *, model: str = "") -> None:
        """Count an answered job in the metrics."""
        request = record.request
        if isinstance(outcome, JobResult):
            name, images = "done", len(outcome.images)
        else:
            name, images = ("cancelled" if outcome.cancelled else "failed"), 0
        self.metrics.job_answered(
            command=command_of(request),
            model=model or request.model or next(iter(self.queue.models), ""),
            scheduler=request.scheduler,
            outcome=name,
            images=images,
            steps=outcome.steps_run,
            gpu_seconds=outcome.gpu_seconds,
            queue_seconds=outcome.queue_seconds,
        )

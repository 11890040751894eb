"""The job driver: checks before queueing, throttled progress, results, failures, buttons.

The fakes (tests/bot/fakes.py) stand in for the GPU worker and Discord.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import itertools
from types import SimpleNamespace
from typing import Any, cast

import discord
import pytest
from PIL import Image

from bot.errors import (
    InvalidOption,
    JobNotFound,
    NotYourJob,
    QueueBusy,
    UserFacingError,
    report_error,
)
from bot.job_requests import RequestOptions
from bot.limits.server import LimitExceeded, UnknownModel
from bot.replies.buttons import JobButton
from bot.storage.database import Database
from bot.storage.job_store import MemoryJobStore, record_of
from bot.storage.limit_store import LimitStorage
from inference.model_info import ModelUnavailable
from inference.protocol import JobFailed, JobQueued, JobResult, JobStarted
from inference.requests import CompareStepsRequest, GenerateRequest, Request
from tests.bot.fakes import (
    COMPARE,
    FLUX,
    IMAGINE,
    OTHER,
    OWNER,
    SD15,
    TURBO,
    WAIT,
    FakeInteraction,
    Harness,
    ScriptedQueue,
    database_harness,
    finished_job,
    model_harness,
    noise_png,
    png_of,
    progress,
    result_for,
)


async def test_an_accepted_job_is_queued_then_deferred_with_thinking(harness: Harness) -> None:
    job_id, interaction, task = await harness.start(IMAGINE)
    assert harness.queue.requests[job_id] == IMAGINE
    assert harness.queue.users[job_id] == str(OWNER)
    first = interaction.recorder.calls[0]
    assert first.kind == "defer"
    assert first.options == {"thinking": True}
    assert not first.ephemeral
    harness.queue.emit(result_for(job_id, IMAGINE))
    await task


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (GenerateRequest(prompt="   "), "prompt is empty"),
        (GenerateRequest(prompt="x", steps=0), "steps must be 1 to 150; got 0"),
        (GenerateRequest(prompt="x", scheduler="Warp 9"), "Unknown scheduler"),
        (GenerateRequest(prompt="x", width=513), "multiple of 8"),
        (CompareStepsRequest(prompt="x", steps=tuple(range(1, 14))), "2 to 12"),
    ],
)
async def test_an_invalid_request_is_refused_before_anything_happens(
    harness: Harness, request_: Request, message: str
) -> None:
    interaction = harness.interaction()
    with pytest.raises(InvalidOption, match=message):
        await harness.service.start(interaction.as_interaction(), request_, origin="imagine")
    assert harness.queue.requests == {}
    assert interaction.recorder.calls == []


async def test_a_request_over_the_operator_ceiling_names_the_limit(harness: Harness) -> None:
    interaction = harness.interaction()
    with pytest.raises(LimitExceeded, match="at most 100 steps; you asked for 120"):
        await harness.service.start(interaction.as_interaction(), GenerateRequest("x", steps=120), origin="imagine")
    assert harness.queue.requests == {}


async def test_a_job_accepted_while_the_model_loads_waits_in_the_queue_with_its_place_shown() -> None:
    harness = Harness(ready=False)
    job_id, interaction, task = await harness.start(IMAGINE)
    assert list(harness.queue.requests) == [job_id]
    harness.queue.emit(JobQueued(job_id, 2))
    await interaction.recorder.wait_for(lambda calls: any("position 2" in (c.content or "") for c in calls))
    shown = [c.content for c in interaction.recorder.of("edit")]
    assert shown[-1] == "⏳ Queued — position 2. The model is still loading; your job runs as soon as it is ready."
    harness.queue.emit(JobStarted(job_id, 1))
    harness.queue.emit(result_for(job_id, IMAGINE))
    await task


async def test_a_full_queue_fails_the_recorded_job_and_removes_the_thinking_message() -> None:
    harness = Harness(max_length=0)
    interaction = harness.interaction()
    with pytest.raises(QueueBusy, match="queue is full"):
        await harness.service.start(interaction.as_interaction(), IMAGINE, origin="imagine")
    assert [call.kind for call in interaction.recorder.calls] == ["defer", "delete"]
    assert list(harness.store.status.values()) == ["failed"]
    assert harness.service.active_jobs == frozenset()


async def test_the_interaction_is_deferred_before_the_ledger_is_read_or_written(db: Database) -> None:
    # Discord drops an interaction not acknowledged within 3 s: nothing a busy ledger does may come first.
    harness = database_harness(db)
    db.server_limits = LimitStorage(db, clock=lambda: 0.0)  # a snapshot never stale here
    await db.server_limits.current_limits(42)
    order: list[str] = []
    sessions, write = db.sessions, db.write

    def reading() -> Any:
        order.append("ledger read")
        return sessions()

    async def writing(operation: Any) -> Any:
        order.append("ledger write")
        return await write(operation)

    db.sessions, db.write = reading, writing  # type: ignore[assignment, method-assign]
    interaction = harness.interaction()
    defer = interaction.response.defer

    async def recording_defer(**options: Any) -> SimpleNamespace:
        order.append("defer")
        return await defer(**options)

    interaction.response.defer = recording_defer  # type: ignore[method-assign]
    job_id, _, task = await harness.start(IMAGINE, interaction)
    assert order[0] == "defer"
    assert "ledger write" in order  # then recorded, with the interaction and its message, before it is queued
    stored = await harness.store.get(job_id)
    assert stored is not None
    assert (stored.interaction_token, stored.message_id) == (interaction.token, interaction.response.message_id)
    harness.queue.emit(result_for(job_id, IMAGINE))
    await task


async def test_a_refusal_that_needs_the_ledger_comes_after_the_defer_and_removes_the_thinking_message(
    db: Database,
) -> None:
    harness = database_harness(db)
    await db.server_limits.set_limits(42, OWNER, max_concurrent_jobs_per_user=1)
    first, _, task = await harness.start(IMAGINE)
    interaction = harness.interaction()
    with pytest.raises(LimitExceeded, match=r"^This server allows 1 job at a time per member; you already have 1 "):
        await harness.service.start(
            interaction.as_interaction(), dataclasses.replace(IMAGINE, seed=7), origin="imagine"
        )
    assert [call.kind for call in interaction.recorder.calls] == ["defer", "delete"]
    assert list(harness.queue.requests) == [first]
    harness.queue.emit(result_for(first, IMAGINE))
    await task


async def test_a_defer_that_fails_records_nothing_and_queues_nothing(harness: Harness) -> None:
    interaction = harness.interaction()
    interaction.response.expired = True
    with pytest.raises(discord.NotFound):
        await harness.service.start(interaction.as_interaction(), IMAGINE, origin="imagine")
    assert harness.store.status == {}
    assert harness.queue.requests == {}
    assert harness.service.active_jobs == frozenset()


# --- following a job --------------------------------------------------------------------------


async def test_progress_goes_from_queue_position_to_steps_with_a_preview(harness: Harness) -> None:
    job_id, interaction, task = await harness.start(IMAGINE)
    recorder = interaction.recorder
    queue = harness.queue

    queue.emit(JobQueued(job_id, 3))
    await recorder.wait_for(lambda calls: any("position 3" in (c.content or "") for c in calls))
    queue.emit(JobStarted(job_id, 1))
    queue.emit(progress(job_id, 7, 20, preview=png_of(32, 40)))
    await recorder.wait_for(lambda calls: any("step 7/20" in (c.content or "") for c in calls))

    step_edit = next(c for c in recorder.of("edit") if "step 7/20" in (c.content or ""))
    assert [name for name, _ in step_edit.files] == ["preview.png"]
    assert step_edit.embeds[0].image.url == "attachment://preview.png"
    assert step_edit.view is not None
    assert [item.custom_id for item in step_edit.view.children] == [f"stepgrid:cancel:{job_id}"]  # type: ignore[attr-defined]

    queue.emit(result_for(job_id, IMAGINE))
    await task
    edits = recorder.of("edit")
    assert all(later.at - earlier.at >= 1.5 for earlier, later in itertools.pairwise(edits))


async def test_a_burst_of_progress_events_makes_few_edits(harness: Harness) -> None:
    job_id, interaction, task = await harness.start(IMAGINE)
    harness.queue.emit(JobStarted(job_id, 1))
    for step in range(1, 21):
        harness.queue.emit(progress(job_id, step, 20))
    harness.queue.emit(result_for(job_id, IMAGINE))
    await task
    edits = interaction.recorder.of("edit")
    assert len(edits) <= 3
    assert edits[-1].files and edits[-1].files[0][0].endswith(".png")


async def test_the_result_has_the_image_an_embed_with_every_parameter_and_buttons(harness: Harness) -> None:
    job_id, interaction, task = await harness.start(IMAGINE)
    harness.queue.emit(result_for(job_id, IMAGINE))
    await task

    final = interaction.recorder.of("edit")[-1]
    assert [name for name, _ in final.files] == ["stepgrid-1234.png"]
    image = Image.open(io.BytesIO(final.files[0][1]))
    assert image.size == (256, 320)
    embed = final.embeds[0]
    fields = {f.name: f.value for f in embed.fields}
    assert embed.description == IMAGINE.prompt
    assert fields["Seed"] == "1234"
    assert fields["Steps"] == "20"
    assert fields["Scheduler"] == IMAGINE.scheduler
    assert fields["Size"] == "256×320"
    assert fields["Guidance"] == "7.5"
    assert fields["Generation"] == "2.0 s"
    assert fields["Queue wait"] == "0.5 s"
    assert "random-weight test model" in (embed.footer.text or "")
    assert final.view is not None
    ids = [item.custom_id for item in final.view.children]  # type: ignore[attr-defined]
    actions = ("reroll", "fewer", "more", "compare", "film", "vary", "vary-strong", "upscale", "details")
    assert ids == [f"stepgrid:{action}:{job_id}" for action in actions]
    assert harness.store.status[job_id] == "done"


async def test_a_comparison_is_one_grid_attachment(harness: Harness) -> None:
    job_id, interaction, task = await harness.start(COMPARE)
    harness.queue.emit(result_for(job_id, COMPARE))
    await task
    final = interaction.recorder.of("edit")[-1]
    assert len(final.files) == 1
    name, data = final.files[0]
    assert name == "stepgrid-compare-99.png"
    grid = Image.open(io.BytesIO(data))
    assert grid.width >= 3 * 256
    fields = {f.name: f.value for f in final.embeds[0].fields}
    assert fields["Steps"] == "5, 10, 20"


async def test_a_result_over_the_attachment_limit_is_reencoded_to_fit(harness: Harness) -> None:
    limit = 60_000
    job_id, interaction, task = await harness.start(IMAGINE, harness.interaction(filesize_limit=limit))
    harness.queue.emit(result_for(job_id, IMAGINE, png=noise_png))
    await task
    name, data = interaction.recorder.of("edit")[-1].files[0]
    assert len(data) <= limit
    assert name.endswith((".jpg", ".webp"))


async def test_a_worker_failure_replaces_the_message_with_an_ephemeral_note(harness: Harness) -> None:
    job_id, interaction, task = await harness.start(IMAGINE)
    harness.queue.emit(JobFailed(job_id, "The GPU ran out of memory.", retryable=True))
    await task
    kinds = [call.kind for call in interaction.recorder.calls]
    assert kinds[-2:] == ["delete", "followup"]
    note = interaction.recorder.calls[-1]
    assert note.ephemeral
    assert "The GPU ran out of memory." in (note.content or "")
    assert harness.store.status[job_id] == "failed"


async def test_an_event_stream_that_ends_early_is_answered_with_a_reference(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    job_id, interaction, task = await harness.start(IMAGINE)
    harness.queue.end_stream_without_result(job_id)
    harness.queue.emit(JobQueued(job_id, 1))  # wake the reader; the stream then ends
    await task
    note = interaction.recorder.calls[-1]
    assert note.kind == "followup" and note.ephemeral
    assert "ref `" in (note.content or "")
    reference = (note.content or "").split("ref `")[1].split("`")[0]
    assert any(reference in record.getMessage() for record in caplog.records)
    assert harness.store.status[job_id] == "failed"
    assert job_id in harness.queue.cancelled


async def test_after_the_token_expires_the_result_goes_to_the_channel() -> None:
    harness = Harness(token_lifetime=0.0)
    job_id, interaction, task = await harness.start(IMAGINE)
    harness.queue.emit(result_for(job_id, IMAGINE))
    await task
    assert interaction.recorder.of("edit") == []
    posted = interaction.recorder.of("channel_send", "channel_edit")
    assert posted[-1].files and posted[-1].files[0][0] == "stepgrid-1234.png"
    assert posted[0].content is not None and posted[0].content.startswith(f"<@{OWNER}>")


async def test_a_dead_token_mid_job_moves_the_message_to_the_channel(harness: Harness) -> None:
    job_id, interaction, task = await harness.start(IMAGINE)
    harness.queue.emit(JobQueued(job_id, 2))
    await interaction.recorder.wait_for(lambda calls: any(c.kind == "edit" for c in calls))
    interaction.token_dead = True
    harness.queue.emit(result_for(job_id, IMAGINE))
    await task
    final = interaction.recorder.calls[-1]
    assert final.kind in ("channel_send", "channel_edit")
    assert final.files[0][0] == "stepgrid-1234.png"


async def test_closing_the_service_waits_for_every_job_to_be_answered(harness: Harness) -> None:
    tasks = [(await harness.start(IMAGINE))[2] for _ in range(3)]
    await harness.queue.close()
    await harness.service.close()
    assert all(task.done() for task in tasks)
    assert sorted(harness.store.status.values()) == ["failed"] * 3


# --- buttons ----------------------------------------------------------------------------------


async def test_reroll_queues_the_same_prompt_with_a_new_seed_for_the_clicker(harness: Harness) -> None:
    job_id = await finished_job(harness)
    click = harness.interaction(user_id=OTHER)
    await harness.service.handle_button(click.as_interaction(), "reroll", job_id)
    new_id = harness.queue.job_ids[-1]
    rerolled = harness.queue.requests[new_id]
    assert isinstance(rerolled, GenerateRequest)
    assert rerolled.prompt == IMAGINE.prompt
    assert rerolled.steps == IMAGINE.steps
    assert rerolled.seed != IMAGINE.seed
    assert harness.queue.users[new_id] == str(OTHER)
    assert click.recorder.calls[0].kind == "defer"
    stored = await harness.store.get(new_id)
    assert stored is not None and stored.parent_job_id == job_id and stored.origin == "reroll"


async def test_buttons_resolve_through_the_store_after_a_restart(harness: Harness) -> None:
    job_id = await finished_job(harness)
    restarted = harness.make_service()  # same store, fresh service: nothing held in memory
    click = harness.interaction()
    await restarted.handle_button(click.as_interaction(), "compare", job_id)
    compare = harness.queue.requests[harness.queue.job_ids[-1]]
    assert isinstance(compare, CompareStepsRequest)
    assert compare.seed == IMAGINE.seed
    assert compare.steps == (5, 10, 20, 30, 40, 50)


async def test_a_button_for_an_unknown_job_says_so(harness: Harness) -> None:
    with pytest.raises(JobNotFound):
        await harness.service.handle_button(harness.interaction().as_interaction(), "reroll", "feedface")


async def test_details_is_an_ephemeral_embed_of_the_stored_parameters(harness: Harness) -> None:
    job_id = await finished_job(harness)
    click = harness.interaction(user_id=OTHER)
    await harness.service.handle_button(click.as_interaction(), "details", job_id)
    (reply,) = click.recorder.calls
    assert reply.kind == "send_message" and reply.ephemeral
    fields = {f.name: f.value for f in reply.embeds[0].fields}
    assert fields["Seed"] == "1234"
    assert fields["Requested by"] == f"<@{OWNER}>"


async def test_the_owner_can_cancel_a_queued_job(harness: Harness) -> None:
    job_id, interaction, task = await harness.start(IMAGINE)
    click = harness.interaction()
    await harness.service.handle_button(click.as_interaction(), "cancel", job_id)
    await task
    assert harness.queue.cancelled == [job_id]
    assert click.recorder.calls[-1].content == "Cancelled." and click.recorder.calls[-1].ephemeral
    assert interaction.recorder.calls[-1].kind == "delete"  # the owner was told already
    assert harness.store.status[job_id] == "cancelled"


class WorkerStopsQueue(ScriptedQueue):
    """Cancelling asks the worker, as for a running job: the job ends when the test emits its end."""

    def cancel(self, job_id: str) -> bool:
        if job_id in self.finished:
            return False
        self.cancelled.append(job_id)
        return True


async def test_cancel_pressed_again_while_the_job_stops_says_it_is_already_cancelled() -> None:
    harness = Harness()
    harness.service.queue = harness.queue = WorkerStopsQueue()
    job_id, interaction, task = await harness.start(IMAGINE)
    first, second = harness.interaction(), harness.interaction()
    await harness.service.handle_button(first.as_interaction(), "cancel", job_id)
    await harness.service.handle_button(second.as_interaction(), "cancel", job_id)
    assert first.recorder.calls[-1].content == "Cancelled."
    assert second.recorder.calls[-1].content == "Already cancelled; it stops after its current step."
    harness.queue.emit(JobFailed.cancellation(job_id))
    await task
    assert interaction.recorder.calls[-1].kind == "delete"  # the owner was told already, once
    assert harness.queue.cancelled == [job_id]


async def test_another_member_cannot_cancel_a_job(harness: Harness) -> None:
    job_id, _, task = await harness.start(IMAGINE)
    with pytest.raises(NotYourJob):
        await harness.service.handle_button(harness.interaction(user_id=OTHER).as_interaction(), "cancel", job_id)
    assert harness.queue.cancelled == []
    harness.queue.emit(result_for(job_id, IMAGINE))
    await task


async def test_a_moderator_cancelling_tells_the_owner(harness: Harness) -> None:
    job_id, interaction, task = await harness.start(IMAGINE)
    moderator = harness.interaction(user_id=OTHER, permissions=discord.Permissions(manage_messages=True))
    await harness.service.handle_button(moderator.as_interaction(), "cancel", job_id)
    await task
    note = interaction.recorder.calls[-1]
    assert note.kind == "followup" and note.ephemeral
    assert note.content == "A moderator cancelled your job."


async def test_cancelling_a_finished_job_says_it_finished(harness: Harness) -> None:
    job_id = await finished_job(harness)
    click = harness.interaction()
    await harness.service.handle_button(click.as_interaction(), "cancel", job_id)
    assert click.recorder.calls[-1].content == "That job has already finished."


# --- with the database-backed store and policy ------------------------------------------------


async def test_the_ledger_has_the_job_from_acceptance_to_its_result(database: Database) -> None:
    harness = database_harness(database)
    job_id, interaction, task = await harness.start(IMAGINE)
    row = await database.ledger.get_job(job_id)
    assert row is not None and row.status == "queued"
    assert (row.message_id, row.message_channel_id) == (interaction.response.message_id, interaction.channel_id)
    harness.queue.emit(JobStarted(job_id, 1))
    harness.queue.emit(result_for(job_id, IMAGINE))
    await task
    row = await database.ledger.get_job(job_id)
    assert row is not None
    assert (row.status, row.steps_run, row.gpu_seconds, row.user_id) == ("done", 20, 1.25, OWNER)


async def test_buttons_resolve_from_the_database_in_a_new_service(database: Database) -> None:
    harness = database_harness(database)
    job_id = await finished_job(harness)
    restarted = database_harness(database)
    click = restarted.interaction(user_id=OTHER)
    await restarted.service.handle_button(click.as_interaction(), "more", job_id)
    (new_id,) = restarted.queue.job_ids
    assert restarted.queue.requests[new_id] == GenerateRequest(**{**IMAGINE.__dict__, "steps": 25})


async def test_a_server_limit_refuses_before_queueing(database: Database) -> None:
    await database.server_limits.set_limits(42, OWNER, max_steps=20)
    harness = database_harness(database)
    interaction = harness.interaction()
    request = GenerateRequest(**{**IMAGINE.__dict__, "steps": 30})
    with pytest.raises(UserFacingError, match=r"This server allows at most 20 steps; you asked for 30\."):
        await harness.service.start(interaction.as_interaction(), request, origin="imagine")
    assert harness.queue.requests == {}
    assert interaction.recorder.calls == []
    assert (await harness.service.limits(42)).request_defaults().steps == 20


class FailingFinishStore(MemoryJobStore):
    """A store whose ledger write for a finished job fails (a full disk, a locked file)."""

    async def mark_finished(self, job_id: str, outcome: JobResult | JobFailed) -> None:
        raise OSError("disk full")


async def test_a_ledger_error_after_delivery_keeps_the_result(caplog: pytest.LogCaptureFixture) -> None:
    harness = Harness()
    harness.store = FailingFinishStore()
    harness.service = harness.make_service()
    job_id, interaction, task = await harness.start(IMAGINE)
    harness.queue.emit(result_for(job_id, IMAGINE))
    await task
    final = interaction.recorder.calls[-1]
    assert final.kind == "edit" and final.files[0][0] == "stepgrid-1234.png"
    assert interaction.recorder.of("delete", "followup") == []
    assert any("could not record its result" in record.getMessage() for record in caplog.records)


async def test_the_queues_own_retries_count_one_attempt(database: Database) -> None:
    harness = database_harness(database)
    job_id, _, task = await harness.start(IMAGINE)
    harness.queue.emit(JobStarted(job_id, 1))
    harness.queue.emit(JobStarted(job_id, 2))  # the worker crashed; the queue ran the job again
    harness.queue.emit(result_for(job_id, IMAGINE))
    await task
    row = await database.ledger.get_job(job_id)
    assert row is not None and (row.status, row.attempts) == ("done", 1)


async def test_a_planned_shutdown_leaves_waiting_and_running_jobs_queued_and_says_so(database: Database) -> None:
    harness = database_harness(database)
    running_id, running_interaction, running_task = await harness.start(IMAGINE)
    queued_id, queued_interaction, queued_task = await harness.start(dataclasses.replace(IMAGINE, seed=5678))
    harness.queue.emit(JobStarted(running_id, 1))
    await queued_interaction.recorder.wait_for(lambda calls: any(c.kind == "edit" for c in calls))

    harness.service.begin_shutdown(keep_queued=True)  # the grace period is over: the queue closes
    await harness.queue.close()
    await harness.service.close()

    assert running_task.done() and queued_task.done()
    running, queued = await database.ledger.get_job(running_id), await database.ledger.get_job(queued_id)
    # Both run at the next start; the run the planned stop cut short is not counted as an attempt.
    assert running is not None and (running.status, running.attempts, running.finished_at) == ("queued", 0, None)
    assert queued is not None and (queued.status, queued.finished_at) == ("queued", None)
    for interaction in (running_interaction, queued_interaction):
        note = interaction.recorder.calls[-1]
        assert note.kind == "edit" and "restarting" in (note.content or "") and note.view is None
        assert interaction.recorder.of("delete", "followup") == []


async def test_a_command_sent_once_a_planned_shutdown_began_is_refused_saying_the_bot_restarts(
    database: Database,
) -> None:
    harness = database_harness(database)
    harness.service.stop_accepting()
    with pytest.raises(UserFacingError, match="Stepgrid is restarting; try again in a minute"):
        await harness.start(IMAGINE)
    assert await database.ledger.unfinished_jobs() == []


@pytest.mark.parametrize(
    ("request_", "failure", "text"),
    [
        (
            IMAGINE,
            JobFailed("j", "The GPU ran out of memory; try a smaller size or fewer images.", retryable=True),
            "Your image could not be made. The GPU ran out of memory; try a smaller size or fewer images.",
        ),
        (
            COMPARE,
            JobFailed("j", "The GPU worker stopped.", retryable=True),
            "Your comparison grid could not be made. The GPU worker stopped. Try again in a moment.",
        ),
        (
            GenerateRequest("x", count=2),
            JobFailed("j", "The model could not load."),
            "Your images could not be made. The model could not load.",
        ),
    ],
    ids=["out-of-memory", "grid", "several-images"],
)
async def test_a_failure_note_names_what_was_asked_and_gives_one_piece_of_advice(
    harness: Harness, request_: Request, failure: JobFailed, text: str
) -> None:
    job_id, interaction, task = await harness.start(request_)
    harness.queue.emit(dataclasses.replace(failure, job_id=job_id))
    await task
    assert interaction.recorder.calls[-1].content == text


# --- every refusal reaches the user as its own message ---------------------------------------------


async def refusal_of(scenario: str) -> tuple[BaseException, FakeInteraction]:
    """Make the service refuse the way `scenario` says; the error and the interaction refused."""
    harness = Harness(max_length=0 if scenario == "queue-full" else 100)
    interaction = harness.interaction(user_id=OTHER)
    if scenario in ("unknown-job", "not-your-job"):
        job_id = "nosuchjob"
        if scenario == "not-your-job":
            job_id, _, _ = await harness.start(IMAGINE)
        action = "cancel" if scenario == "not-your-job" else "reroll"
        attempt = harness.service.handle_button(interaction.as_interaction(), action, job_id)
    else:
        request = {"invalid-option": GenerateRequest("x", steps=0), "over-a-limit": GenerateRequest("x", steps=120)}
        attempt = harness.service.start(interaction.as_interaction(), request.get(scenario, IMAGINE), origin="imagine")
    with pytest.raises(Exception) as caught:
        await attempt
    return caught.value, interaction


@pytest.mark.parametrize(
    ("scenario", "refusal", "text"),
    [
        ("invalid-option", InvalidOption, "steps must be 1 to 150; got 0."),
        ("queue-full", QueueBusy, "The queue is full (0 of 0 jobs waiting); try again in a minute."),
        (
            "unknown-job",
            JobNotFound,
            "I know no job `nosuchjob` in this server (a job's buttons work only where it was made); "
            "run the command again instead.",
        ),
        ("not-your-job", NotYourJob, "Only the member who started this job (or a moderator) can cancel it."),
        ("over-a-limit", LimitExceeded, "This server allows at most 100 steps; you asked for 120."),
    ],
)
async def test_every_refusal_is_a_user_facing_error(scenario: str, refusal: type[Exception], text: str) -> None:
    error, interaction = await refusal_of(scenario)
    assert type(error) is refusal and isinstance(error, UserFacingError)
    await report_error(interaction.as_interaction(), error)
    reply = interaction.recorder.calls[-1]
    assert reply.ephemeral and reply.content == text


# --- models ----------------------------------------------------------------------------------------


async def start_command(harness: Harness, **options: Any) -> Request:
    """Run a command's options through the service; the request that was queued."""
    await harness.service.start_command(
        harness.interaction().as_interaction(), RequestOptions(**{"prompt": "a fox", **options}), origin="imagine"
    )
    return harness.queue.requests[harness.queue.job_ids[-1]]


async def test_a_left_out_model_is_the_default_and_its_own_defaults_fill_the_options() -> None:
    request = await start_command(model_harness())
    assert request == GenerateRequest(
        "a fox", steps=25, scheduler="Euler a", seed=request.seed, guidance=7.5, width=512, height=512, model="sd15"
    )


async def test_a_chosen_model_brings_its_steps_guidance_scheduler_and_native_size() -> None:
    request = await start_command(model_harness(), model=" SDXL-Turbo")
    assert (request.model, request.steps, request.guidance, request.scheduler) == ("sdxl-turbo", 4, 0.0, "Euler a")
    assert (request.width, request.height) == (1024, 1024)


async def test_the_native_size_is_clipped_to_the_operators_max_image_size() -> None:
    request = await start_command(model_harness(max_image_size=768), model="flux")
    assert (request.width, request.height) == (768, 768)


async def test_compare_steps_defaults_to_the_models_own_ladder() -> None:
    harness = model_harness()
    turbo = await start_command(harness, model="sdxl-turbo", grid=True)
    sd = await start_command(harness, grid=True)
    assert turbo.steps == (1, 2, 3, 4, 6, 8) and sd.steps == (5, 10, 20, 30, 40, 50)


async def test_an_operator_default_scheduler_the_model_cant_run_gives_way_to_the_models() -> None:
    harness = model_harness(default_scheduler="DDIM")
    assert (await start_command(harness)).scheduler == "DDIM"  # sd15 runs DDIM
    assert (await start_command(harness, model="flux")).scheduler == "Euler"


async def test_a_model_that_failed_to_load_is_refused_in_one_line_and_the_others_work() -> None:
    harness = model_harness()
    harness.queue.load(SD15, TURBO, failed=(ModelUnavailable("flux", "no such folder ./flux"),))
    interaction = harness.interaction()
    with pytest.raises(UnknownModel, match=r"^The model flux is unavailable: no such folder \./flux$"):
        await harness.service.start_command(
            interaction.as_interaction(), RequestOptions("a fox", model="flux"), origin="imagine"
        )
    assert interaction.recorder.calls == [] and harness.queue.job_ids == []
    assert (await start_command(harness, model="sdxl-turbo")).model == "sdxl-turbo"


async def test_an_unknown_model_is_refused_listing_the_models() -> None:
    with pytest.raises(UnknownModel, match=r"Unknown model 'sdxl'; choose one of: sd15, sdxl-turbo, flux."):
        await start_command(model_harness(), model="sdxl")


async def test_a_scheduler_the_model_cant_run_is_refused_before_anything_is_answered() -> None:
    harness = model_harness()
    interaction = harness.interaction()
    with pytest.raises(InvalidOption, match="The model flux can't run the scheduler 'DDIM'; choose one of: Euler,"):
        await harness.service.start_command(
            interaction.as_interaction(), RequestOptions("a fox", scheduler="DDIM", model="flux"), origin="imagine"
        )
    assert interaction.recorder.calls == [] and harness.queue.job_ids == []


async def test_a_size_off_the_models_grid_is_refused_in_one_line() -> None:
    with pytest.raises(InvalidOption, match=r"width must be a multiple of 16 for the model flux; got 520."):
        await start_command(model_harness(), model="flux", size="520")


async def test_a_size_over_the_servers_limit_is_refused_with_that_limit_not_the_general_range() -> None:
    harness = model_harness(max_image_size=1024)
    # The general check alone would say "at most 2,359,296 pixels (e.g. 1536x1536 …)": sizes this server refuses.
    with pytest.raises(
        LimitExceeded, match=r"^This server allows images of at most 1024×1024; you asked for 2048×2048\.$"
    ):
        await start_command(harness, size="2048")
    assert harness.queue.job_ids == []


async def test_a_size_under_the_minimum_is_refused_naming_the_servers_range() -> None:
    with pytest.raises(InvalidOption, match=r"^width must be a multiple of 8 from 256 to 512; got 100\.$"):
        await start_command(model_harness(max_image_size=512), size="100x256")


async def test_the_results_more_button_stops_at_the_models_ceiling_in_its_server() -> None:
    harness = model_harness()
    job_id, interaction, task = await harness.start(GenerateRequest("a fox", steps=8, model="sdxl-turbo"))
    harness.queue.emit(result_for(job_id, harness.queue.requests[job_id]))
    await task
    view = interaction.recorder.of("edit")[-1].view
    assert view is not None
    more = next(item.item for item in view.children if isinstance(item, JobButton) and item.action == "more")
    assert more.disabled and more.label == "8 steps"


async def test_steps_over_the_models_registry_ceiling_are_refused_naming_the_model() -> None:
    with pytest.raises(InvalidOption, match=r"steps must be at most 8 for the model sdxl-turbo; got 20."):
        await start_command(model_harness(), model="sdxl-turbo", steps=20)


async def test_reroll_keeps_the_jobs_model() -> None:
    harness = model_harness()
    request = await start_command(harness, model="flux")
    job_id = harness.queue.job_ids[-1]
    harness.queue.emit(result_for(job_id, request))
    await harness.service.handle_button(harness.interaction().as_interaction(), "reroll", job_id)
    rerolled = harness.queue.requests[harness.queue.job_ids[-1]]
    assert rerolled.model == "flux" and rerolled.seed != request.seed


async def test_more_steps_stops_at_the_models_ceiling() -> None:
    harness = model_harness()
    request = await start_command(harness, model="sdxl-turbo", steps=8)
    job_id = harness.queue.job_ids[-1]
    harness.queue.emit(result_for(job_id, request))
    with pytest.raises(InvalidOption, match="8 steps is already the most"):
        await harness.service.handle_button(harness.interaction().as_interaction(), "more", job_id)
    await harness.service.handle_button(harness.interaction().as_interaction(), "fewer", job_id)
    fewer = harness.queue.requests[harness.queue.job_ids[-1]]
    assert isinstance(fewer, GenerateRequest) and (fewer.model, fewer.steps) == ("sdxl-turbo", 6)


async def test_compare_steps_button_uses_the_models_ladder_around_the_images_steps() -> None:
    harness = model_harness()
    request = await start_command(harness, model="sdxl-turbo", steps=5)
    job_id = harness.queue.job_ids[-1]
    harness.queue.emit(result_for(job_id, request))
    await harness.service.handle_button(harness.interaction().as_interaction(), "compare", job_id)
    grid = harness.queue.requests[harness.queue.job_ids[-1]]
    assert isinstance(grid, CompareStepsRequest)
    assert (grid.model, grid.steps) == ("sdxl-turbo", (1, 2, 3, 4, 5, 6, 8))


async def test_without_known_models_the_request_names_no_model(harness: Harness) -> None:
    # A worker that has not reported its models (or an old one): the worker's default runs it.
    request = await start_command(harness)
    assert request.model == "" and (request.steps, request.scheduler) == (30, "Euler a")


async def test_flux_is_offered_no_negative_prompt() -> None:
    with pytest.raises(InvalidOption, match="doesn't use a negative prompt"):
        await start_command(model_harness(), model="flux", negative_prompt="blurry")


def test_the_fake_models_fit_the_fake_registry() -> None:
    assert [model.name for model in (SD15, TURBO, FLUX)] == ["sd15", "sdxl-turbo", "flux"]


async def test_a_job_failed_after_two_worker_crashes_counts_the_steps_that_ran(database: Database) -> None:
    harness = database_harness(database)
    job_id, _, task = await harness.start(IMAGINE)
    harness.queue.emit(JobStarted(job_id, 1))
    harness.queue.emit(progress(job_id, 5, 20))
    harness.queue.emit(JobStarted(job_id, 2))  # the worker crashed; the queue ran the job again
    harness.queue.emit(progress(job_id, 7, 20))
    harness.queue.emit(JobFailed(job_id, "The GPU worker crashed 2 times while running this job, so it was stopped."))
    await task
    row = await database.ledger.get_job(job_id)
    assert row is not None and (row.status, row.steps_run) == ("failed", 12)


async def test_a_moderator_of_another_server_cannot_cancel_a_running_job(harness: Harness) -> None:
    job_id, _, task = await harness.start(IMAGINE)
    outsider = harness.interaction(user_id=OTHER, permissions=discord.Permissions(manage_messages=True))
    outsider.guild_id = 4242
    with pytest.raises(JobNotFound):
        await harness.service.handle_button(outsider.as_interaction(), "cancel", job_id)
    assert harness.queue.cancelled == []
    harness.queue.emit(result_for(job_id, IMAGINE))
    await task


# --- commands sent while the models load --------------------------------------------------------


async def start_while_loading(harness: Harness, **options: Any) -> tuple[FakeInteraction, asyncio.Task[None]]:
    """Send a command's options while the worker is still loading: accepted, not queued yet."""
    interaction = harness.interaction()
    task = await harness.service.start_command(
        interaction.as_interaction(), RequestOptions(**{"prompt": "a fox", **options}), origin="imagine"
    )
    return interaction, task


async def ended(task: asyncio.Task[None]) -> None:
    """The job's driver has answered it (a bug fails fast instead of hanging)."""
    await asyncio.wait_for(task, WAIT)


async def shown(interaction: FakeInteraction, text: str) -> None:
    await interaction.recorder.wait_for(lambda calls: any(text in (c.content or "") for c in calls))


FLUX_FIRST = 'models = [{name = "flux", source = "tiny-flux"}, {name = "sd15", source = "tiny"}]'


async def test_a_command_sent_while_the_models_load_gets_its_models_defaults_once_they_are_known() -> None:
    harness = model_harness(loading=True, model=FLUX_FIRST)  # FLUX is the default: Euler a would be refused
    interaction, task = await start_while_loading(harness, seed=7)
    await shown(interaction, "The model is still loading")
    assert harness.queue.requests == {}  # held: its defaults aren't known yet

    harness.queue.finish_loading(FLUX, SD15)
    [job_id] = await harness.queue.wait_for_jobs(1)
    flux = GenerateRequest(
        "a fox", steps=28, scheduler="Euler", seed=7, guidance=3.5, width=1024, height=1024, model="flux"
    )
    assert harness.queue.requests[job_id] == flux
    stored = await harness.store.get(job_id)
    assert stored is not None and stored.request == flux and stored.options is None
    harness.queue.emit(result_for(job_id, flux))
    await ended(task)
    assert harness.store.status[job_id] == "done"


async def test_a_left_out_seed_drawn_at_acceptance_is_kept_when_the_job_is_built() -> None:
    harness = model_harness(loading=True)
    _, task = await start_while_loading(harness)
    [job_id] = [job for job in harness.store.jobs]
    provisional = harness.store.jobs[job_id].request
    harness.queue.finish_loading(SD15)
    await harness.queue.wait_for_jobs(1)
    assert harness.queue.requests[job_id].seed == provisional.seed
    assert (harness.queue.requests[job_id].steps, harness.queue.requests[job_id].model) == (25, "sd15")
    harness.queue.emit(JobFailed(job_id, "done with it"))
    await ended(task)


async def test_a_scheduler_its_model_cant_run_is_refused_on_the_jobs_message_once_the_model_is_known() -> None:
    harness = model_harness(loading=True)
    interaction, task = await start_while_loading(harness, scheduler="DDIM", model="flux")
    harness.queue.finish_loading(SD15, FLUX)
    await ended(task)
    assert harness.queue.requests == {}
    assert list(harness.store.status.values()) == ["failed"]
    note = interaction.recorder.calls[-1]
    assert note.kind == "followup" and note.ephemeral
    assert note.content is not None and "The model flux can't run the scheduler 'DDIM'; choose one of: Euler" in (
        note.content
    )


async def test_a_size_off_the_models_grid_is_refused_once_the_model_is_known() -> None:
    harness = model_harness(loading=True, max_image_size=512)
    with pytest.raises(LimitExceeded, match="at most 512×512; you asked for 1024×1024"):
        await start_while_loading(harness, size="1024")  # a size typed over the limit: refused at once
    assert harness.store.jobs == {}
    interaction, task = await start_while_loading(harness, size="264", model="flux")
    harness.queue.finish_loading(SD15, FLUX)
    await ended(task)
    note = interaction.recorder.calls[-1]
    assert note.content is not None and "width must be a multiple of 16 for the model flux; got 264." in note.content


async def test_commands_held_while_the_models_load_show_their_place_and_are_queued_in_that_order() -> None:
    harness = model_harness(loading=True)
    first, first_task = await start_while_loading(harness, prompt="one")
    second, second_task = await start_while_loading(harness, prompt="two")
    await shown(first, "Queued — position 1. The model is still loading")
    await shown(second, "Queued — position 2. The model is still loading")
    harness.queue.finish_loading(SD15)
    job_ids = await harness.queue.wait_for_jobs(2)
    assert [harness.queue.requests[job_id].prompt for job_id in job_ids] == ["one", "two"]
    for job_id, task in zip(job_ids, (first_task, second_task), strict=True):
        harness.queue.emit(result_for(job_id, harness.queue.requests[job_id]))
        await ended(task)


async def test_a_command_held_while_the_models_load_can_be_cancelled() -> None:
    harness = model_harness(loading=True)
    interaction, task = await start_while_loading(harness)
    [job_id] = list(harness.store.jobs)
    click = harness.interaction()
    await harness.service.handle_button(click.as_interaction(), "cancel", job_id)
    await ended(task)
    assert click.recorder.calls[-1].content == "Cancelled."
    assert interaction.recorder.calls[-1].kind == "delete"
    assert harness.store.status[job_id] == "cancelled"
    harness.queue.finish_loading(SD15)
    assert harness.queue.requests == {}


async def test_a_shutdown_while_the_models_load_leaves_the_held_job_queued_with_its_options(
    database: Database,
) -> None:
    harness = database_harness(database, ready=False)
    interaction, task = await start_while_loading(harness, seed=3)
    [job_id] = [row.id for row in await database.ledger.unfinished_jobs()]
    harness.service.begin_shutdown(keep_queued=True)
    await ended(task)
    await shown(interaction, "Stepgrid is restarting")
    row = await database.ledger.get_job(job_id)
    assert row is not None and row.status == "queued"
    record = record_of(row)
    assert record.options == RequestOptions("a fox", seed=3)

    # The next start: recovery resumes it, and it is built for its model once that is known.
    restarted = database_harness(database, ready=False)
    client = cast(discord.Client, restarted.interaction().client)
    # (its interaction expired meanwhile: the answer goes to the channel)
    task = restarted.service.resume(client, dataclasses.replace(record, interaction_token=None), token_age=900.0)
    default = (await restarted.service.limits(record.guild_id)).default_model
    restarted.queue.finish_loading(dataclasses.replace(FLUX, name=default))  # a FLUX model as the default
    [queued] = await restarted.queue.wait_for_jobs(1)
    request = restarted.queue.requests[queued]
    assert (request.model, request.scheduler, request.steps, request.width) == (default, "Euler", 28, 1024)
    assert request.seed == 3
    row = await database.ledger.get_job(job_id)
    assert row is not None and row.to_request() == request and record_of(row).options is None
    assert (row.scheduler, row.model, row.steps_requested) == ("Euler", default, 28)
    restarted.queue.emit(JobFailed(job_id, "stopped"))
    await ended(task)

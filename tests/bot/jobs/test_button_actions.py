"""A job's buttons (bot.jobs.button_actions): details, cancel, reroll, fewer/more steps, compare."""

from __future__ import annotations

import discord
import pytest

from bot.errors import InvalidOption, JobNotFound, NotYourJob
from bot.storage.database import Database
from inference.protocol import JobFailed
from inference.requests import CompareStepsRequest, GenerateRequest
from tests.bot.fakes import (
    IMAGINE,
    OTHER,
    OWNER,
    SD15,
    Harness,
    ScriptedQueue,
    database_harness,
    finished_job,
    model_harness,
    result_for,
)
from tests.bot.jobs.service_helpers import ended, start_command, start_while_loading

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


async def test_buttons_resolve_from_the_database_in_a_new_service(database: Database) -> None:
    harness = database_harness(database)
    job_id = await finished_job(harness)
    restarted = database_harness(database)
    click = restarted.interaction(user_id=OTHER)
    await restarted.service.handle_button(click.as_interaction(), "more", job_id)
    (new_id,) = restarted.queue.job_ids
    assert restarted.queue.requests[new_id] == GenerateRequest(**{**IMAGINE.__dict__, "steps": 25})


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


async def test_a_moderator_of_another_server_cannot_cancel_a_running_job(harness: Harness) -> None:
    job_id, _, task = await harness.start(IMAGINE)
    outsider = harness.interaction(user_id=OTHER, permissions=discord.Permissions(manage_messages=True))
    outsider.guild_id = 4242
    with pytest.raises(JobNotFound):
        await harness.service.handle_button(outsider.as_interaction(), "cancel", job_id)
    assert harness.queue.cancelled == []
    harness.queue.emit(result_for(job_id, IMAGINE))
    await task


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

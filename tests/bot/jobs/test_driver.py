"""Driving a job (bot.jobs.driver): throttled progress, results, failures, jobs held while the models load."""

from __future__ import annotations

import dataclasses
import io
import itertools

import pytest
from PIL import Image

from bot.replies.buttons import JobButton
from bot.storage.database import Database
from inference.protocol import JobFailed, JobQueued, JobStarted
from inference.requests import GenerateRequest, Request
from tests.bot.fakes import (
    COMPARE,
    FLUX,
    IMAGINE,
    OWNER,
    SD15,
    Harness,
    database_harness,
    model_harness,
    noise_png,
    png_of,
    progress,
    result_for,
)
from tests.bot.jobs.service_helpers import FLUX_FIRST, ended, shown, start_while_loading

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


async def test_the_queues_own_retries_count_one_attempt(database: Database) -> None:
    harness = database_harness(database)
    job_id, _, task = await harness.start(IMAGINE)
    harness.queue.emit(JobStarted(job_id, 1))
    harness.queue.emit(JobStarted(job_id, 2))  # the worker crashed; the queue ran the job again
    harness.queue.emit(result_for(job_id, IMAGINE))
    await task
    row = await database.ledger.get_job(job_id)
    assert row is not None and (row.status, row.attempts) == ("done", 1)


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


# --- models ----------------------------------------------------------------------------------------


async def test_the_results_more_button_stops_at_the_models_ceiling_in_its_server() -> None:
    harness = model_harness()
    job_id, interaction, task = await harness.start(GenerateRequest("a fox", steps=8, model="sdxl-turbo"))
    harness.queue.emit(result_for(job_id, harness.queue.requests[job_id]))
    await task
    view = interaction.recorder.of("edit")[-1].view
    assert view is not None
    more = next(item.item for item in view.children if isinstance(item, JobButton) and item.action == "more")
    assert more.disabled and more.label == "8 steps"


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


# --- commands sent while the models load --------------------------------------------------------


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

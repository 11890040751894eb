"""Admission (bot.jobs.admission): checks before queueing, the defer, refusals, each model's defaults.

The fakes (tests/bot/fakes.py) stand in for the GPU worker and Discord.
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import Any

import discord
import pytest

from bot.errors import InvalidOption, JobNotFound, NotYourJob, QueueBusy, UserFacingError, report_error
from bot.job_requests import RequestOptions
from bot.limits.server import LimitExceeded, UnknownModel
from bot.storage.database import Database
from bot.storage.limit_store import LimitStorage
from inference.model_info import ModelUnavailable
from inference.protocol import JobFailed, JobQueued, JobStarted
from inference.requests import CompareStepsRequest, GenerateRequest, Request
from tests.bot.fakes import (
    FLUX,
    IMAGINE,
    OTHER,
    OWNER,
    SD15,
    TURBO,
    FakeInteraction,
    Harness,
    database_harness,
    model_harness,
    result_for,
)
from tests.bot.jobs.service_helpers import ended, start_command, start_while_loading


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


async def test_steps_over_the_models_registry_ceiling_are_refused_naming_the_model() -> None:
    with pytest.raises(InvalidOption, match=r"steps must be at most 8 for the model sdxl-turbo; got 20."):
        await start_command(model_harness(), model="sdxl-turbo", steps=20)


async def test_flux_is_offered_no_negative_prompt() -> None:
    with pytest.raises(InvalidOption, match="doesn't use a negative prompt"):
        await start_command(model_harness(), model="flux", negative_prompt="blurry")


def test_the_fake_models_fit_the_fake_registry() -> None:
    assert [model.name for model in (SD15, TURBO, FLUX)] == ["sd15", "sdxl-turbo", "flux"]


# --- commands sent while the models load --------------------------------------------------------


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

"""Learned steps: the middle settle step of this server's grids once there are N of them, else the default with
one line that says why."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from bot.job_requests import RequestOptions
from bot.jobs.learned_steps import LearnedSteps, learned_steps
from bot.jobs.policy import SettingsPolicy
from bot.storage.sweet_spots import SettledRow, SweetSpot, sweet_spot
from inference.protocol import JobFailed, SafetyVerdict
from inference.requests import CompareSchedulersRequest, GenerateRequest
from tests.bot.fakes import SD15, Harness, model_harness, result_for


def choose(spot: SweetSpot | None, *, ceiling: int = 150, min_grids: int = 3) -> LearnedSteps:
    return learned_steps(spot, model="tiny", scheduler="DPM++ 2M Karras", default_steps=30, ceiling=ceiling,
                         min_grids=min_grids)  # fmt: skip


def test_the_middle_settle_step_of_n_grids_is_used_and_said() -> None:
    assert choose(sweet_spot("tiny", "DPM++ 2M Karras", {20: 2, 30: 1})) == LearnedSteps(
        20, "20 steps: where this server's grids settle for DPM++ 2M Karras (tiny, the middle of 3 grids)."
    )


def test_never_from_fewer_than_n_grids() -> None:
    assert choose(sweet_spot("tiny", "DPM++ 2M Karras", {20: 2}), min_grids=3) == LearnedSteps(
        None,
        "30 steps, the default: learned steps need 3 grids of DPM++ 2M Karras on tiny; this server has 2 "
        "(`/compare-steps` adds one).",
    )
    assert choose(None).steps is None and "this server has 0" in choose(None).note


def test_no_sweet_spot_when_most_grids_did_not_settle() -> None:
    chosen = choose(sweet_spot("tiny", "DPM++ 2M Karras", {20: 1, None: 2}))
    assert chosen.steps is None and "most of this server's DPM++ 2M Karras grids on tiny did not settle" in chosen.note


def test_a_learned_count_over_the_servers_step_ceiling_is_not_used() -> None:
    chosen = choose(sweet_spot("tiny", "DPM++ 2M Karras", {40: 3}), ceiling=30)
    assert chosen == LearnedSteps(
        None,
        "30 steps, the default: this server's DPM++ 2M Karras grids on tiny settle at 40 steps, over the "
        "30-step limit.",
    )


# --- through the job service: a scripted queue, the fake models SD15 (25 steps, Euler a) ------------------


class RememberingPolicy(SettingsPolicy):
    """The operator's limits, and a server memory of three Euler a grids on sd15 that settle at 12 steps."""

    async def sweet_spot(self, guild_id: int | None, model: str, scheduler: str) -> SweetSpot | None:
        return sweet_spot(model, scheduler, {12: 3}) if (model, scheduler) == ("sd15", "Euler a") else None


async def start_imagine(harness: Harness) -> None:
    await harness.service.start_command(
        harness.interaction().as_interaction(), RequestOptions("a fox"), origin="imagine"
    )


def remembering(harness: Harness) -> Harness:
    harness.service.policy = RememberingPolicy(harness.service.policy.settings)  # type: ignore[attr-defined]
    return harness


async def test_imagine_without_steps_runs_the_learned_count_and_its_result_says_so() -> None:
    harness = remembering(model_harness(learned_steps=True))
    interaction = harness.interaction()
    task = await harness.service.start_command(interaction.as_interaction(), RequestOptions("a fox"), origin="imagine")
    [job_id] = await harness.queue.wait_for_jobs(1)
    request = harness.queue.requests[job_id]
    assert request.steps == 12

    harness.queue.emit(result_for(job_id, request))
    await asyncio.wait_for(task, 30)
    final = interaction.recorder.calls[-1]
    assert final.content == "12 steps: where this server's grids settle for Euler a (sd15, the middle of 3 grids)."


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"steps": 30}, id="steps-typed"),
        pytest.param({"scheduler": "DDIM"}, id="no-memory-of-that-scheduler"),
    ],
)
async def test_typed_steps_win_and_a_scheduler_without_n_grids_keeps_the_default(options: dict[str, Any]) -> None:
    harness = remembering(model_harness(learned_steps=True))
    await harness.service.start_command(
        harness.interaction().as_interaction(), RequestOptions("a fox", **options), origin="imagine"
    )
    [job_id] = await harness.queue.wait_for_jobs(1)
    assert harness.queue.requests[job_id].steps == options.get("steps", 25)
    note = harness.store.jobs[job_id].steps_note
    assert note == ("" if "steps" in options else
                    "25 steps, the default: learned steps need 3 grids of DDIM on sd15; this server has 0 "
                    "(`/compare-steps` adds one).")  # fmt: skip
    harness.queue.emit(JobFailed(job_id, "done with it"))


async def test_steps_auto_finds_its_own_steps_without_a_learned_count() -> None:
    harness = remembering(model_harness(learned_steps=True))
    await harness.service.start_command(
        harness.interaction().as_interaction(),
        RequestOptions("a fox", scheduler="Euler", auto_steps=True),
        origin="imagine",
    )
    [job_id] = await harness.queue.wait_for_jobs(1)
    request = harness.queue.requests[job_id]
    assert isinstance(request, GenerateRequest) and request.auto_steps and request.steps != 12
    assert harness.store.jobs[job_id].steps_note == ""
    harness.queue.emit(JobFailed(job_id, "done with it"))


async def test_learned_steps_off_change_nothing() -> None:
    harness = remembering(model_harness())
    await harness.service.start_command(
        harness.interaction().as_interaction(), RequestOptions("a fox"), origin="imagine"
    )
    [job_id] = await harness.queue.wait_for_jobs(1)
    assert (harness.queue.requests[job_id].steps, harness.store.jobs[job_id].steps_note) == (25, "")
    harness.queue.emit(JobFailed(job_id, "done with it"))


async def test_a_command_held_while_the_models_load_gets_its_learned_steps_once_built() -> None:
    harness = remembering(model_harness(loading=True, learned_steps=True))
    await harness.service.start_command(
        harness.interaction().as_interaction(), RequestOptions("a fox"), origin="imagine"
    )
    harness.queue.finish_loading(SD15)
    [job_id] = await harness.queue.wait_for_jobs(1)
    assert harness.queue.requests[job_id].steps == 12
    assert (await harness.store.get(job_id)).steps_note.startswith("12 steps: where this server's grids settle")  # type: ignore[union-attr]
    harness.queue.emit(JobFailed(job_id, "done with it"))


async def test_a_delivered_grid_is_remembered_without_the_row_whose_cell_was_withheld() -> None:
    harness = model_harness()
    request = CompareSchedulersRequest("a fox", schedulers=("Euler", "DDIM"), steps=(5, 10), seed=3, model="sd15",
                                       width=256, height=256)  # fmt: skip
    job_id, _, task = await harness.start(request)
    result = result_for(job_id, request)
    flagged = SafetyVerdict(flagged=True, score=0.9, checker="test")
    images = list(result.images)
    images[3] = dataclasses.replace(images[3], verdict=flagged)  # DDIM's 10-step cell, in a channel that withholds it
    harness.queue.emit(dataclasses.replace(result, images=tuple(images)))
    await asyncio.wait_for(task, 30)

    assert harness.store.settle_points[job_id] == (SettledRow(0, "Euler", (5, 10), 5),)

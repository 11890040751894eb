"""A lane's bookkeeping (progress in the member's steps, rows, its batching group) and a job's: which lanes
run now so that all its cells finish together, its step totals, its share of device time.

No model: the lanes here hold placeholder tensors, as the engine's arithmetic never reads them."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import torch

from inference.engine.lanes import EngineJob, Lane
from inference.families import Conditioning
from inference.models.loading import LoadedModel
from inference.requests import CompareStepsRequest, GenerateRequest, HiresFix, Request

MODEL = cast(LoadedModel, SimpleNamespace(name="tiny", family=SimpleNamespace(flow=False)))


def conditioning(*, guided: bool = True) -> Conditioning:
    rows = {"prompt_embeds": torch.zeros(1, 2, 4)}
    return Conditioning(cond=rows, uncond=rows if guided else None, guidance=torch.tensor([7.5]))


def job(request: Request, **fields: Any) -> EngineJob:
    return EngineJob("job", request, MODEL, conditioning(), order=0, **fields)


def lane(owner: EngineJob, calls: int, *, steps: int | None = None, **fields: Any) -> Lane:
    """A lane of `steps` scheduler steps that calls the denoiser `calls` times (twice a step: Heun, DPM2)."""
    made = Lane(
        owner, index=len(owner.all_lanes), steps=steps or calls, seed=1, scheduler=cast(Any, None),
        timesteps=[torch.tensor(t) for t in range(calls)], latents=torch.zeros(1), generator=torch.Generator(),
        step_kwargs={}, **fields,
    )  # fmt: skip
    owner.all_lanes.append(made)
    owner.lanes.append(made)
    return made


def test_a_grids_longest_lane_starts_first_and_the_others_join_so_all_finish_together() -> None:
    grid = job(CompareStepsRequest("a fox", steps=(2, 4, 6)))
    two, four, six = lane(grid, 2), lane(grid, 4), lane(grid, 6)
    assert grid.due_lanes() == [six]
    six.position = 1
    assert grid.due_lanes() == [six], "five calls left on the longest: the 4-step lane waits"
    six.position = 2
    assert grid.due_lanes() == [four, six], "four calls left on the longest: the 4-step lane joins"
    six.position, four.position = 4, 2
    assert grid.due_lanes() == [two, four, six] and {x.remaining for x in (two, four, six)} == {2}
    two.position = 1
    assert grid.due_lanes() == [four, six, two], "longest first"


def test_progress_is_counted_in_the_members_steps_when_a_step_takes_two_denoiser_calls() -> None:
    heun = lane(job(GenerateRequest("a fox")), calls=8, steps=4)
    assert (heun.progress_steps, heun.remaining, heun.done) == (0, 8, False)
    heun.position = 3
    assert heun.progress_steps == 1, "a step is done once both its calls are"
    heun.position = 8
    assert (heun.progress_steps, heun.remaining, heun.done) == (4, 0, True)


def test_an_img2img_lane_counts_only_the_steps_it_runs_of_its_schedule() -> None:
    partial = lane(job(GenerateRequest("a fox")), calls=3, steps=10, ran=3)
    partial.position = 3
    assert (partial.progress_steps, partial.steps, partial.ran) == (3, 10, 3)
    assert lane(job(GenerateRequest("a fox")), calls=4).ran == 4, "a text-to-image lane runs all its steps"


def test_a_lane_without_guidance_adds_one_row_to_a_denoiser_call_and_with_it_two() -> None:
    owner = job(GenerateRequest("a fox"))
    assert lane(owner, 2).rows == 2
    assert lane(owner, 2, own_conditioning=conditioning(guided=False)).rows == 1


def test_lanes_batch_by_model_loras_and_size_and_a_plain_row_carries_its_own_lora_set() -> None:
    owner = job(GenerateRequest("a fox", width=256, height=384), adapters=(("detail", 0.8),))
    assert lane(owner, 2).group == owner.group == ("tiny", (("detail", 0.8),), 384, 256)
    assert lane(owner, 2, own_adapters=()).group == ("tiny", (), 384, 256)


def test_a_hires_jobs_total_counts_its_second_pass_before_it_starts() -> None:
    owner = job(GenerateRequest("a fox", count=2, steps=4, hires=HiresFix(steps=10, strength=0.5)), hires_pending=True)
    first = [lane(owner, 4), lane(owner, 4)]
    assert owner.steps_total == 2 * 4 + 2 * 5  # each image's hires pass runs 5 of its 10 steps
    for done in first:
        done.position = 4
    assert owner.steps_done == 8


def test_a_lanes_cost_is_its_share_of_each_batch_and_a_jobs_the_sum_of_its_lanes() -> None:
    owner = job(CompareStepsRequest("a fox", steps=(2, 4)))
    lane(owner, 2, cpu_seconds=0.5)
    lane(owner, 4, cpu_seconds=1.25)
    assert owner.gpu_seconds == 1.75

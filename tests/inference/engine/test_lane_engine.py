"""The lane engine on the real tiny SD pipeline (random weights, fp32 CPU): batching must not change
any lane's result, for every scheduler, and each lane is a true N-step run. Other families' lanes
are tested in tests/inference/families/, several models in one engine at the end of this file."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import torch
from PIL import Image

from bot.pictures.grids import grid_rows
from inference.models.loading import LoadedModel
from inference.protocol import JobProgress
from inference.requests import SCHEDULER_NAMES, CompareSchedulersRequest, CompareStepsRequest, GenerateRequest
from inference.schedulers import make_scheduler
from tests.inference.conftest import LoadTestModel
from tests.inference.lanes import RecordingEngine, relative_error, run_alone

SIZE = 256
STEPS = 6


@pytest.fixture(scope="module")
def tiny(load_test_model: LoadTestModel) -> LoadedModel:
    return load_test_model("tiny")


def _run_alone(model: LoadedModel, request: GenerateRequest) -> torch.Tensor:
    return run_alone(model, request)


_relative_error = relative_error


@pytest.mark.parametrize("scheduler", SCHEDULER_NAMES)
def test_a_lane_in_a_batch_equals_the_same_lane_alone(tiny: LoadedModel, scheduler: str) -> None:
    request = GenerateRequest("a red fox in snow", steps=STEPS, scheduler=scheduler, seed=1234,
                              guidance=6.0, width=SIZE, height=SIZE, negative_prompt="blurry")  # fmt: skip
    alone = _run_alone(tiny, request)

    engine = RecordingEngine(tiny)
    engine.add_job("neighbour-a", GenerateRequest("a castle", steps=STEPS + 3, scheduler="Euler a", seed=9,
                                                  width=SIZE, height=SIZE, count=2))  # fmt: skip
    engine.add_job("subject", request)
    engine.add_job("neighbour-b", CompareStepsRequest("a boat", steps=(2, 4, STEPS), scheduler="DPM++ 2M",
                                                      seed=5, guidance=3.0, width=SIZE, height=SIZE))  # fmt: skip
    engine.run_until_idle()

    assert max(engine.batch_sizes) >= 4, "the subject must have shared UNet calls with other lanes"
    assert _relative_error(engine.final_latents[("subject", 0)], alone) <= 1e-4
    image = Image.open(io.BytesIO(engine.result("subject").images[0].png))
    assert image.size == (SIZE, SIZE) and image.mode == "RGB"
    assert np.asarray(image).std() > 0  # a real decoded image, not a blank


def test_same_seed_gives_the_same_image_and_another_seed_does_not(tiny: LoadedModel) -> None:
    request = GenerateRequest("a lighthouse", steps=4, scheduler="Euler a", seed=42, width=SIZE, height=SIZE)
    first = _run_alone(tiny, request)
    again = _run_alone(tiny, request)
    other = _run_alone(tiny, GenerateRequest("a lighthouse", steps=4, scheduler="Euler a", seed=43,
                                             width=SIZE, height=SIZE))  # fmt: skip
    assert torch.equal(first, again)
    assert _relative_error(other, first) > 0.1


@pytest.mark.parametrize("scheduler", ["Euler", "Euler a", "DPM++ 2M", "DPM++ 2M Karras", "Heun"])
def test_a_lane_matches_the_plain_diffusers_pipeline_call(tiny: LoadedModel, scheduler: str) -> None:
    """Each lane is exactly what StableDiffusionPipeline.__call__ computes for that scheduler."""
    request = GenerateRequest("a red fox", steps=5, scheduler=scheduler, seed=77, guidance=7.5,
                              width=SIZE, height=SIZE)  # fmt: skip
    ours = _run_alone(tiny, request)
    pipe = tiny.pipe
    plain = type(pipe)(**{**pipe.components, "scheduler": make_scheduler(pipe.scheduler.config, scheduler, 77)})
    plain.set_progress_bar_config(disable=True)
    theirs = plain(
        "a red fox", num_inference_steps=5, guidance_scale=7.5, height=SIZE, width=SIZE,
        generator=torch.Generator("cpu").manual_seed(77), output_type="latent",
    ).images  # fmt: skip
    assert _relative_error(ours, theirs) <= 1e-4
    assert pipe.scheduler.__class__.__name__ == "PNDMScheduler", "the pipeline's own scheduler is never mutated"


def test_compare_steps_lanes_are_honest_n_step_runs_that_finish_together(tiny: LoadedModel) -> None:
    steps = (2, 5, 8)
    engine = RecordingEngine(tiny)
    engine.add_job("grid", CompareStepsRequest("a boat", steps=steps, scheduler="DPM++ 2M", seed=3,
                                               width=SIZE, height=SIZE))  # fmt: skip
    engine.run_until_idle()
    assert engine.batch_sizes == [1, 1, 1, 2, 2, 2, 3, 3]  # right-aligned: the 2-step lane joins last
    result = engine.result("grid")
    assert [image.steps for image in result.images] == list(steps)
    for index, n in enumerate(steps):
        alone = _run_alone(tiny, GenerateRequest("a boat", steps=n, scheduler="DPM++ 2M", seed=3,
                                                 width=SIZE, height=SIZE))  # fmt: skip
        assert _relative_error(engine.final_latents[("grid", index)], alone) <= 1e-4


def test_second_order_schedulers_report_progress_in_user_steps(tiny: LoadedModel) -> None:
    engine = RecordingEngine(tiny)
    engine.add_job("heun", GenerateRequest("fox", steps=4, scheduler="Heun", width=SIZE, height=SIZE))
    engine.run_until_idle()
    progress = [e for e in engine.events if isinstance(e, JobProgress)]
    assert len(progress) == 7  # Heun calls the UNet 2N-1 times
    assert [p.step for p in progress][-1] == 4 and all(p.total == 4 for p in progress)
    assert [p.step for p in progress] == sorted(p.step for p in progress)


def test_lanes_of_different_sizes_never_share_a_unet_call(tiny: LoadedModel) -> None:
    engine = RecordingEngine(tiny)
    engine.add_job("square", GenerateRequest("fox", steps=3, scheduler="Euler", width=SIZE, height=SIZE, count=2))
    engine.add_job("wide", GenerateRequest("fox", steps=3, scheduler="Euler", width=SIZE + 64, height=SIZE))
    engine.run_until_idle()
    assert sorted(engine.batch_sizes) == [1, 1, 1, 2, 2, 2]
    assert Image.open(io.BytesIO(engine.result("wide").images[0].png)).size == (SIZE + 64, SIZE)


def test_a_job_with_more_cells_than_the_batch_cap_finishes_with_steady_progress(tiny: LoadedModel) -> None:
    engine = RecordingEngine(tiny)
    engine.max_batch_lanes = 2
    steps = (2, 4, 6, 8)
    engine.add_job("grid", CompareStepsRequest("a boat", steps=steps, scheduler="Euler", seed=3,
                                               width=SIZE, height=SIZE))  # fmt: skip
    engine.run_until_idle()
    assert max(engine.batch_sizes) == 2
    assert [image.steps for image in engine.result("grid").images] == list(steps)
    done = [e.job_step for e in engine.events if isinstance(e, JobProgress)]
    assert done == sorted(done) and done[-1] == sum(steps)
    for index, n in enumerate(steps):
        alone = _run_alone(tiny, GenerateRequest("a boat", steps=n, scheduler="Euler", seed=3, width=SIZE, height=SIZE))
        assert _relative_error(engine.final_latents[("grid", index)], alone) <= 1e-4


def test_two_families_in_one_engine_take_turns_and_each_lane_equals_its_run_alone(
    tiny: LoadedModel, load_test_model: LoadTestModel
) -> None:
    flux = load_test_model("tiny-flux")
    engine = RecordingEngine([tiny, flux])
    sd_request = GenerateRequest("a fox", steps=4, scheduler="DPM++ 2M", seed=1, width=SIZE, height=SIZE, count=2)
    flux_request = CompareStepsRequest("a fox", steps=(2, 4), scheduler="Euler", seed=2, guidance=0.0,
                                       width=128, height=128, model="tiny-flux")  # fmt: skip
    engine.add_job("sd", sd_request)
    engine.add_job("flux", flux_request)
    engine.run_until_idle()
    assert engine.batch_models[:4] == ["tiny", "tiny-flux", "tiny", "tiny-flux"], "models take turns"
    assert engine.result("sd").model == "tiny" and engine.result("flux").model == "tiny-flux"
    for index in range(2):
        alone = run_alone(tiny, dataclasses.replace(sd_request, seed=1 + index, count=1))
        assert _relative_error(engine.final_latents[("sd", index)], alone) <= 1e-4
    for index, steps in enumerate((2, 4)):
        alone = run_alone(flux, GenerateRequest("a fox", steps=steps, scheduler="Euler", seed=2, guidance=0.0,
                                                width=128, height=128, model="tiny-flux"))  # fmt: skip
        assert _relative_error(engine.final_latents[("flux", index)], alone) <= 1e-4


# --- /compare-schedulers ---------------------------------------------------------------------

GRID = CompareSchedulersRequest(
    "a red fox in snow", schedulers=("Euler a", "DPM++ 2M Karras", "UniPC", "DDIM"), steps=(2, 4, 6), seed=77,
    guidance=6.0, width=SIZE, height=SIZE,
)  # fmt: skip


@pytest.fixture(scope="module")
def scheduler_grid(tiny: LoadedModel) -> RecordingEngine:
    engine = RecordingEngine(tiny)
    engine.add_job("grid", GRID)
    engine.run_until_idle()
    return engine


def test_a_scheduler_grid_equals_its_cells_rendered_one_at_a_time(
    tiny: LoadedModel, scheduler_grid: RecordingEngine
) -> None:
    assert max(scheduler_grid.batch_sizes) == len(GRID.lane_steps), "every cell shares the denoiser calls"
    images = scheduler_grid.result("grid").images
    cells = list(zip(GRID.lane_schedulers, GRID.lane_steps, strict=True))
    assert [image.steps for image in images] == list(GRID.lane_steps)
    for index, (scheduler, steps) in enumerate(cells):
        alone = run_alone(tiny, GenerateRequest(GRID.prompt, steps=steps, scheduler=scheduler, seed=GRID.seed,
                                                guidance=GRID.guidance, width=SIZE, height=SIZE))  # fmt: skip
        error = relative_error(scheduler_grid.final_latents[("grid", index)], alone)
        assert error <= 1e-4, f"{scheduler} at {steps} steps differs from its run alone by {error:.2e}"


def test_the_sweet_spot_measure_of_real_runs_is_stable_for_a_fixed_seed(
    tiny: LoadedModel, scheduler_grid: RecordingEngine
) -> None:
    again = RecordingEngine(tiny)
    again.add_job("neighbour", GenerateRequest("a castle", steps=5, seed=3, width=SIZE, height=SIZE, count=2))
    again.add_job("grid", GRID)
    again.run_until_idle()

    first = grid_rows(GRID, scheduler_grid.result("grid").images)
    second = grid_rows(GRID, again.result("grid").images)
    assert [row.scheduler for _, row in first] == list(GRID.schedulers)
    for (_, a), (_, b) in zip(first, second, strict=True):
        assert a.changes == pytest.approx(b.changes, abs=0.05)  # percent; batch numerics differ by ~1e-6
        assert a.settled == b.settled
        assert all(change > 0 for change in a.changes[1:]), "different step counts give different images"

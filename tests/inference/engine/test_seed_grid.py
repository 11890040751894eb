"""`seeds` on /compare-steps in the lane engine, on the real tiny pipeline (fp32 CPU): every cell of a seeds grid
is the same run as a lone /imagine of its seed at its step count, and all its cells share the denoiser calls."""

from __future__ import annotations

import pytest

from bot.pictures.render import png_parameters
from inference.requests import CompareStepsRequest, GenerateRequest
from tests.inference.conftest import LoadTestModel
from tests.inference.lanes import RecordingEngine, relative_error, run_alone

SIZE = 256


@pytest.mark.parametrize("scheduler", ["Euler a", "DPM++ 2M Karras"])  # ancestral: noise drawn from each lane's seed
def test_each_cell_of_a_seeds_grid_equals_a_lone_imagine_of_its_seed(
    load_test_model: LoadTestModel, scheduler: str
) -> None:
    model = load_test_model("tiny")
    grid = CompareStepsRequest("a red fox in snow", steps=(2, 3), scheduler=scheduler, seed=11, seeds=3,
                               width=SIZE, height=SIZE)  # fmt: skip
    engine = RecordingEngine(model)
    engine.add_job("grid", grid)
    engine.run_until_idle()
    assert max(engine.batch_sizes) == 6, "every cell of every seed shares the denoiser calls"
    images = engine.result("grid").images
    assert [(image.seed, image.steps) for image in images] == [(11, 2), (11, 3), (12, 2), (12, 3), (13, 2), (13, 3)]
    for index, (steps, seed) in enumerate(zip(grid.lane_steps, grid.lane_seeds, strict=True)):
        alone = run_alone(model, GenerateRequest(grid.prompt, steps=steps, scheduler=scheduler, seed=seed,
                                                 width=SIZE, height=SIZE))  # fmt: skip
        error = relative_error(engine.final_latents[("grid", index)], alone)
        assert error <= 1e-4, f"seed {seed} at {steps} steps differs from its /imagine by {error:.2e}"
        assert f"Seed: {seed}," in (png_parameters(images[index].png) or "")  # each cell is reproducible

"""A strength grid (`/compare-strength`) in the lane engine: one job whose lanes start from one image at
their own strengths, batched together, each cell equal to the same img2img lane run alone."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from inference.models.loading import LoadedModel
from inference.parameters import PNG_KEY
from inference.requests import CompareStrengthRequest, GenerateRequest, img2img_steps
from tests.a1111 import parse_generation_parameters
from tests.inference.conftest import LoadTestModel
from tests.inference.families.checks import input_png
from tests.inference.lanes import RecordingEngine, relative_error, run_alone

SIZE = 64


@pytest.mark.parametrize(("name", "guidance"), [("tiny", 7.5), ("tiny-flux", 0.0)])
def test_every_cell_of_a_strength_grid_equals_its_img2img_lane_run_alone(
    load_test_model: LoadTestModel, name: str, guidance: float
) -> None:
    model: LoadedModel = load_test_model(name)
    image = input_png(SIZE, SIZE)
    grid = CompareStrengthRequest("a red fox", strengths=(0.3, 0.6, 0.9), steps=(4, 7), scheduler="Euler", seed=11,
                                  guidance=guidance, width=SIZE, height=SIZE, image=image, model=name)  # fmt: skip
    engine = RecordingEngine(model)
    engine.add_job("grid", grid)
    engine.run_until_idle()
    assert max(engine.batch_sizes) > 1, "the grid's lanes share denoiser calls"
    result = engine.result("grid")
    flow = model.family.flow
    for index, (steps, strength) in enumerate(zip(grid.lane_steps, grid.lane_strengths, strict=True)):
        alone = GenerateRequest("a red fox", steps=steps, scheduler="Euler", seed=11, guidance=guidance, width=SIZE,
                                height=SIZE, image=image, strength=strength, model=name)  # fmt: skip
        error = relative_error(engine.final_latents[("grid", index)], run_alone(model, alone))
        assert error <= 1e-4, f"cell {index} ({steps} steps at strength {strength}): {error:.2e}"
        cell = result.images[index]
        assert (cell.steps, cell.strength, cell.steps_run) == (
            steps,
            strength,
            img2img_steps(steps, strength, flow=flow),
        )
        with Image.open(io.BytesIO(cell.png)) as png:
            parameters = parse_generation_parameters(png.text[PNG_KEY])
        assert (parameters["Steps"], parameters["Denoising strength"]) == (str(steps), f"{strength:g}")

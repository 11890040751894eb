"""/compare-guidance in the lane engine, on the real tiny pipelines (fp32 CPU): every cell of a
guidance grid is the same run as its one image at that guidance, all cells share the denoiser calls,
and each cell's PNG text carries its own guidance (FLUX-dev's as Forge's distilled guidance)."""

from __future__ import annotations

import pytest

from bot.pictures.render import png_parameters
from inference.models.loading import LoadedModel
from inference.requests import CompareGuidanceRequest, GenerateRequest
from tests.inference.conftest import LoadTestModel
from tests.inference.lanes import RecordingEngine, relative_error, run_alone

SIZE = 256


def _grid_cells_equal_their_runs_alone(model: LoadedModel, grid: CompareGuidanceRequest) -> RecordingEngine:
    engine = RecordingEngine(model)
    engine.add_job("grid", grid)
    engine.run_until_idle()
    assert max(engine.batch_sizes) == len(grid.lane_steps), "every cell shares the denoiser calls"
    images = engine.result("grid").images
    assert [image.steps for image in images] == list(grid.lane_steps)
    cells = zip(grid.lane_steps, grid.lane_guidances, strict=True)
    for index, (steps, guidance) in enumerate(cells):
        alone = run_alone(model, GenerateRequest(grid.prompt, steps=steps, scheduler=grid.scheduler, seed=grid.seed,
                                                 guidance=guidance, width=SIZE, height=SIZE))  # fmt: skip
        error = relative_error(engine.final_latents[("grid", index)], alone)
        assert error <= 1e-4, f"guidance {guidance:g} at {steps} steps differs from its run alone by {error:.2e}"
    return engine


def test_a_guidance_grid_equals_its_cells_run_one_at_a_time_with_and_without_cfg_rows(
    load_test_model: LoadTestModel,
) -> None:
    # Guidance 1 runs as one row (no classifier-free guidance), the others as two: one batch mixes both.
    grid = CompareGuidanceRequest("a red fox in snow", guidances=(1.0, 3.0, 7.5), steps=(2, 4), scheduler="Euler",
                                  seed=31, width=SIZE, height=SIZE)  # fmt: skip
    engine = _grid_cells_equal_their_runs_alone(load_test_model("tiny"), grid)
    texts = [png_parameters(image.png) or "" for image in engine.result("grid").images]
    assert ["CFG scale: 1," in texts[0], "CFG scale: 3," in texts[1], "CFG scale: 7.5," in texts[2]] == [True] * 3
    assert "Steps: 4," in texts[3] and "Distilled" not in texts[3]


def test_flux_dev_sweeps_its_distilled_guidance_and_writes_it_as_forge_does(load_test_model: LoadTestModel) -> None:
    model = load_test_model("tiny-flux-dev")
    grid = CompareGuidanceRequest("a red fox in snow", guidances=(2.0, 3.5, 6.0), steps=(3,), scheduler="Euler",
                                  seed=5, width=SIZE, height=SIZE, model=model.name)  # fmt: skip
    engine = _grid_cells_equal_their_runs_alone(model, grid)
    images = engine.result("grid").images
    assert len({image.png for image in images}) == 3, "each distilled guidance gives its own image"
    text = png_parameters(images[1].png) or ""
    assert "CFG scale: 1, Distilled CFG Scale: 3.5," in text


@pytest.mark.parametrize("guidances", [(1.0, 4.0), (2.0, 9.0)])
def test_guidance_changes_the_image_of_a_cfg_model(
    load_test_model: LoadTestModel, guidances: tuple[float, ...]
) -> None:
    engine = RecordingEngine(load_test_model("tiny"))
    engine.add_job("grid", CompareGuidanceRequest("a boat", guidances=guidances, steps=(2,), scheduler="Euler",
                                                  width=SIZE, height=SIZE))  # fmt: skip
    engine.run_until_idle()
    first, second = (engine.final_latents[("grid", i)] for i in range(2))
    assert relative_error(first, second) > 1e-3

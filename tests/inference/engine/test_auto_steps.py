"""`steps: auto` in the lane engine, on the real tiny pipeline (fp32 CPU): an auto lane stops once its
predicted clean image (x0) has settled, its image is the x0 a plain run of the same schedule has at that
step, it frees its place in the batch, and the lanes it shared batches with are unchanged."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from inference.engine.lanes import Lane
from inference.parameters import PNG_KEY
from inference.requests import GenerateRequest
from tests.inference.conftest import LoadTestModel
from tests.inference.lanes import RecordingEngine, relative_error, run_alone

SIZE = 256
MOST = 12  # checks every 2 steps


class X0Engine(RecordingEngine):
    """Also keeps a film lane's x0 latents at every step (a plain run's prediction, step by step)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.x0: dict[tuple[str, int], torch.Tensor] = {}

    def _capture_frame(self, lane: Lane, x0: torch.Tensor, source: str) -> None:
        self.x0[(lane.job.job_id, lane.progress_steps)] = x0.clone()
        super()._capture_frame(lane, x0, source)


def request(**fields: object) -> GenerateRequest:
    base: dict[str, object] = {"steps": MOST, "scheduler": "Euler", "seed": 8, "width": SIZE, "height": SIZE}
    return GenerateRequest("a red fox in the snow", **{**base, **fields})  # type: ignore[arg-type]


@pytest.mark.parametrize("scheduler", ["Euler", "DPM++ 2M"])
def test_an_auto_lane_stops_early_with_the_x0_a_plain_run_has_at_that_step(
    load_test_model: LoadTestModel, scheduler: str
) -> None:
    engine = X0Engine(load_test_model("tiny"))
    engine.add_job("auto", request(scheduler=scheduler, auto_steps=True))
    engine.add_job("film", request(scheduler=scheduler, film=True))
    engine.run_until_idle()

    image = engine.result("auto").images[0]
    assert image.auto_settled is True
    assert image.steps == MOST and image.steps_ran is not None and 2 <= image.steps_ran < MOST
    assert image.steps_run == image.steps_ran == engine.result("auto").steps_run
    error = relative_error(engine.final_latents[("auto", 0)], engine.x0[("film", image.steps_ran)])
    assert error <= 1e-4, f"the auto image is not the plain run's x0 at step {image.steps_ran}: {error:.2e}"
    text = Image.open(io.BytesIO(image.png)).text[PNG_KEY]
    assert f"Steps: {image.steps_ran}," in text
    assert f"Auto steps: settled at {image.steps_ran} of {MOST} steps" in text
    assert image.stopped_sigma > 0


def test_an_auto_lane_frees_its_place_and_leaves_the_fixed_lane_beside_it_unchanged(
    load_test_model: LoadTestModel,
) -> None:
    model = load_test_model("tiny")
    fixed = request(seed=21)
    engine = RecordingEngine(model)
    engine.add_job("auto", request(auto_steps=True))
    engine.add_job("fixed", fixed)
    engine.run_until_idle()

    ran = engine.result("auto").images[0].steps_ran
    assert ran is not None and ran < MOST
    assert engine.batch_sizes == [2] * ran + [1] * (MOST - ran), "the stopped lane left the batch"
    error = relative_error(engine.final_latents[("fixed", 0)], run_alone(model, fixed))
    assert error <= 1e-4, f"the fixed lane changed by sharing batches with an auto lane: {error:.2e}"
    assert engine.result("fixed").images[0].auto_settled is None

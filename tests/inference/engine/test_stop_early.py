"""`/compare-steps stop_early:` in the lane engine, on the real tiny pipeline (fp32 CPU): the honest cells
are unchanged, and the longest cell's own run keeps its x0 at every shorter step count, the same frames a
Steps film of that run shows, from one batched job."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from inference.requests import CompareStepsRequest, GenerateRequest
from tests.inference.conftest import LoadTestModel
from tests.inference.lanes import RecordingEngine, relative_error

SIZE = 256


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


@pytest.mark.parametrize("scheduler", ["Euler", "DPM++ 2M Karras", "Heun"])
def test_the_stopped_row_is_the_longest_runs_film_at_those_steps_and_the_honest_row_is_unchanged(
    load_test_model: LoadTestModel, scheduler: str
) -> None:
    model = load_test_model("tiny")
    plain = CompareStepsRequest("a red fox", steps=(2, 3, 6), scheduler=scheduler, seed=8, width=SIZE, height=SIZE)
    stopped = CompareStepsRequest("a red fox", steps=(2, 3, 6), scheduler=scheduler, seed=8, width=SIZE, height=SIZE,
                                  stop_early=True)  # fmt: skip
    film = GenerateRequest("a red fox", steps=6, scheduler=scheduler, seed=8, width=SIZE, height=SIZE, film=True)
    engine = RecordingEngine(model)
    for job, request in (("plain", plain), ("stopped", stopped), ("film", film)):
        engine.add_job(job, request)
    engine.run_until_idle()

    for index in range(3):
        error = relative_error(engine.final_latents[("stopped", index)], engine.final_latents[("plain", index)])
        assert error <= 1e-4, f"cell {index} changed by stopping early: {error:.2e}"
    longest = engine.result("stopped").images[2]
    frames = engine.result("film").images[0].frames
    assert len(longest.frames) == 2, "x0 at 2 and 3 steps only"
    for frame, step in zip(longest.frames, (2, 3), strict=True):
        assert np.abs(pixels(frame) - pixels(frames[step - 1])).max() <= 1
    assert len(longest.frame_sigmas) == 6
    assert [image.frames for image in engine.result("stopped").images[:2]] == [(), ()]

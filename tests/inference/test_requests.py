"""The requests: their lanes, the steps that run (an img2img lane's share, a hires pass), what they cost, and
what is left out of a repr."""

from __future__ import annotations

import dataclasses

import pytest

from inference.model_info import ModelInfo
from inference.requests import (
    REQUEST_TYPES,
    SCHEDULER_NAMES,
    CompareStepsRequest,
    GenerateRequest,
    HiresFix,
    InvalidRequest,
    img2img_steps,
    lane_steps_run,
    recast,
    step_pixels,
    total_steps,
)
from inference.validation import validate, validate_for_model
from tests.inference.protocol_samples import GOOD, PNG, strength_grid


def test_lanes_and_cost() -> None:
    compare = CompareStepsRequest("fox", seed=7)
    assert compare.lane_steps == (5, 10, 20, 30, 40, 50)
    assert set(compare.lane_seeds) == {7}
    assert total_steps(compare) == 155
    four = GenerateRequest("fox", steps=20, count=4, seed=2**32 - 2)
    assert four.lane_seeds == (2**32 - 2, 2**32 - 1, 0, 1)
    assert total_steps(four) == 80


def test_steps_that_run_follow_each_familys_img2img_pipeline() -> None:
    # diffusers: SD/SDXL run int(N * strength) steps, SD 3 and FLUX start at int(N - N * strength).
    assert img2img_steps(10, 0.55, flow=False) == 5 and img2img_steps(10, 0.55, flow=True) == 6
    assert img2img_steps(4, 0.2, flow=False) == 0 and img2img_steps(4, 0.2, flow=True) == 1
    request = dataclasses.replace(GOOD, steps=4, image=PNG, strength=0.2)
    validate(request)  # one step runs on a flow model
    sd = ModelInfo("sd15", "sd", SCHEDULER_NAMES, "Euler a", 30, 7.5, (5, 10), 512, 8)
    with pytest.raises(InvalidRequest, match=r"At strength 0\.2, 4 steps run no step over the image"):
        validate_for_model(request, sd)
    validate_for_model(request, dataclasses.replace(sd, family="flux", schedulers=("Euler a",)))
    assert total_steps(dataclasses.replace(GOOD, image=PNG, strength=0.6)) == 18
    assert total_steps(GOOD) == 30


def test_the_input_image_is_left_out_of_the_requests_repr() -> None:
    assert "image" not in repr(dataclasses.replace(GOOD, image=PNG * 1000))


def test_a_hires_pass_counts_its_steps_at_its_own_size() -> None:
    request = dataclasses.replace(GOOD, steps=20, width=512, height=512, hires=HiresFix(steps=10, strength=0.5))
    assert total_steps(request) == 25
    assert step_pixels(request) == 20 * 512 * 512 + 5 * 1024 * 1024
    upscale = dataclasses.replace(request, image=PNG)
    assert total_steps(upscale) == 5 and step_pixels(upscale) == 5 * 1024 * 1024


def test_a_strength_grid_runs_row_by_row_each_lane_at_its_strength() -> None:
    request = strength_grid(steps=(10, 30))

    assert request.lane_steps == (10, 10, 10, 30, 30, 30)
    assert request.lane_strengths == (0.3, 0.6, 0.9) * 2
    assert lane_steps_run(request) == (3, 6, 9, 9, 18, 27)
    assert total_steps(request) == 72 and step_pixels(request) == 72 * 512 * 512
    validate(request)


def test_each_request_type_is_named_by_the_command_that_asks_for_it() -> None:
    assert [kind.command for kind in REQUEST_TYPES] == [
        "imagine",
        "compare-steps",
        "compare-schedulers",
        "compare-strength",
        "compare-guidance",
    ]
    assert "command" not in {f.name for f in dataclasses.fields(GenerateRequest)}, "a class fact, not a field"


def test_a_request_recast_as_another_kind_keeps_what_every_request_carries() -> None:
    shared = {"width": 640, "height": 384, "negative_prompt": "blur", "model": "tiny", "loras": (("pixel", 0.8),)}
    grid = CompareStepsRequest("fox", seed=7, image=PNG, **shared, steps=(4, 8), scheduler="DDIM", seeds=2)
    cell = recast(grid, GenerateRequest, seed=8, steps=4)
    assert cell == GenerateRequest("fox", seed=8, image=PNG, **shared, steps=4)

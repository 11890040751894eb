"""SDXL on the random-weight tiny-sdxl: two text encoders, pooled embeddings and size time ids,
CFG rows (guidance > 1) and Turbo-style lanes at guidance 0 (one row) in the same batch."""

from __future__ import annotations

import pytest

from inference.families import family_for
from inference.loading import LoadedModel
from inference.protocol import GenerateRequest
from inference.registry import ModelSpec
from inference.schedulers import make_scheduler
from tests.inference.conftest import LoadTestModel
from tests.inference.families.checks import (
    assert_equals_plain_pipeline,
    assert_mixed_batch_equals_alone,
    neighbours_for,
)

SIZE = 64


@pytest.fixture(scope="module")
def sdxl(load_test_model: LoadTestModel) -> LoadedModel:
    return load_test_model("tiny-sdxl")


@pytest.mark.parametrize("scheduler", ["Euler", "Euler a", "DPM++ 2M Karras", "Heun", "DPM++ SDE", "LCM"])
def test_a_lane_in_a_mixed_batch_equals_the_same_lane_alone(sdxl: LoadedModel, scheduler: str) -> None:
    subject = GenerateRequest("a red fox", steps=5, scheduler=scheduler, seed=1234, guidance=6.0,
                              width=SIZE, height=SIZE, negative_prompt="blurry")  # fmt: skip
    # One neighbour runs Turbo-style at guidance 0 (one row per lane), one with CFG rows.
    assert_mixed_batch_equals_alone(sdxl, subject, neighbours_for(SIZE, "Euler a", (0.0, 3.0)))


def test_a_turbo_style_lane_at_guidance_0_equals_itself_alone_beside_cfg_lanes(sdxl: LoadedModel) -> None:
    subject = GenerateRequest("a red fox", steps=2, scheduler="Euler a", seed=3, guidance=0.0, width=SIZE, height=SIZE)
    assert_mixed_batch_equals_alone(sdxl, subject, neighbours_for(SIZE, "DPM++ 2M", (7.0, 5.0)))


@pytest.mark.parametrize(
    ("scheduler", "guidance", "width", "height"),
    [("Euler", 5.0, SIZE, SIZE), ("Euler a", 0.0, SIZE, SIZE), ("DPM++ 2M", 7.5, 2 * SIZE, SIZE),
     ("Heun", 3.0, SIZE, SIZE), ("LCM", 1.0, SIZE, SIZE)],
)  # fmt: skip
def test_a_lane_matches_the_plain_stable_diffusion_xl_pipeline(
    sdxl: LoadedModel, scheduler: str, guidance: float, width: int, height: int
) -> None:
    request = GenerateRequest("a red fox", steps=4, scheduler=scheduler, seed=77, guidance=guidance,
                              width=width, height=height, negative_prompt="blurry")  # fmt: skip
    fresh = make_scheduler(sdxl.pipe.scheduler.config, scheduler, 77)
    assert_equals_plain_pipeline(sdxl, request, fresh, negative_prompt="blurry")


def test_sdxl_reports_its_family_and_defaults(sdxl: LoadedModel) -> None:
    info = sdxl.info
    assert (info.family, info.size_multiple, info.default_guidance, info.default_steps) == ("sdxl", 8, 5.0, 30)
    assert info.uses_guidance and "DPM++ 2M Karras" in info.schedulers and info.is_test_model


def test_a_turbo_model_defaults_to_few_steps_and_no_guidance(sdxl: LoadedModel) -> None:
    spec = ModelSpec(name="sdxl-turbo", source="tiny-sdxl")
    info = family_for(sdxl.pipe, spec, sdxl.device, sdxl.dtype).info()
    assert (info.default_steps, info.default_guidance, info.uses_guidance) == (4, 0.0, False)
    assert info.compare_steps == (1, 2, 3, 4, 6, 8)


def test_an_lcm_model_defaults_to_the_lcm_scheduler_at_guidance_1(sdxl: LoadedModel) -> None:
    spec = ModelSpec(name="sdxl-lcm-merge", source="tiny-sdxl")
    info = family_for(sdxl.pipe, spec, sdxl.device, sdxl.dtype).info()
    assert (info.default_scheduler, info.default_steps, info.default_guidance, info.uses_guidance) == (
        "LCM",
        4,
        1.0,
        False,
    )

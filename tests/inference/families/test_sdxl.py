"""SDXL on the random-weight tiny-sdxl: two text encoders, pooled embeddings and size time ids,
CFG rows (guidance > 1) and Turbo-style lanes at guidance 0 (one row) in the same batch."""

from __future__ import annotations

import dataclasses

import pytest

from inference.families import family_for
from inference.model_info import GUIDANCE_CFG
from inference.models.loading import LoadedModel
from inference.registry import ModelSpec
from inference.requests import GenerateRequest
from inference.schedulers import TCD_ETA, make_scheduler
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


@pytest.mark.parametrize("scheduler", ["Euler", "Euler a", "DPM++ 2M Karras", "Heun", "DPM++ SDE", "LCM", "TCD"])
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
     ("Heun", 3.0, SIZE, SIZE), ("LCM", 1.0, SIZE, SIZE), ("TCD", 0.0, SIZE, SIZE), ("TCD", 3.0, SIZE, SIZE)],
)  # fmt: skip
def test_a_lane_matches_the_plain_stable_diffusion_xl_pipeline(
    sdxl: LoadedModel, scheduler: str, guidance: float, width: int, height: int
) -> None:
    request = GenerateRequest("a red fox", steps=4, scheduler=scheduler, seed=77, guidance=guidance,
                              width=width, height=height, negative_prompt="blurry")  # fmt: skip
    fresh = make_scheduler(sdxl.pipe.scheduler.config, scheduler, 77)
    # TCD runs at eta 0.3, as diffusers' TCD docs call the pipeline (its own default eta is 0).
    call = {"eta": TCD_ETA} if scheduler == "TCD" else {}
    assert_equals_plain_pipeline(sdxl, request, fresh, negative_prompt="blurry", **call)


def test_sdxl_reports_its_family_and_defaults(sdxl: LoadedModel) -> None:
    info = sdxl.info
    assert (info.family, info.size_multiple, info.default_guidance, info.default_steps) == ("sdxl", 8, 5.0, 30)
    assert info.guidance_mode == GUIDANCE_CFG and "DPM++ 2M Karras" in info.schedulers and info.is_test_model


def test_a_turbo_model_defaults_to_few_steps_and_no_guidance(sdxl: LoadedModel) -> None:
    spec = ModelSpec(name="sdxl-turbo", source="tiny-sdxl")
    info = family_for(sdxl.pipe, spec, sdxl.device, sdxl.dtype).info()
    assert (info.default_steps, info.default_guidance, info.guidance_mode) == (4, 0.0, GUIDANCE_CFG)
    # The scheduler it ships with (tiny-sdxl's is SDXL base's EulerDiscreteScheduler), as its card runs it.
    assert info.default_scheduler == "Euler"
    assert info.compare_steps == (1, 2, 3, 4, 6, 8)


@pytest.fixture(scope="module")
def turbo(sdxl: LoadedModel) -> LoadedModel:
    """The tiny SDXL under a Turbo name, its scheduler config SDXL base's ("leading" spacing)."""
    spec = ModelSpec(name="sdxl-turbo", source="tiny-sdxl")
    family = family_for(sdxl.pipe, spec, sdxl.device, sdxl.dtype)
    return dataclasses.replace(sdxl, name=spec.name, family=family, info=family.info())


@pytest.mark.parametrize(("scheduler", "steps"), [("Euler a", 1), ("Euler a", 4), ("DPM++ 2M", 2)])
def test_a_few_step_lane_starts_at_the_last_timestep_as_the_model_cards_run_it(
    turbo: LoadedModel, scheduler: str, steps: int
) -> None:
    # SDXL Turbo and Lightning: "timestep_spacing='trailing'"; with SDXL base's "leading" a 1-step
    # run would start at t=1 and decode noise.
    request = GenerateRequest("a red fox", steps=steps, scheduler=scheduler, seed=8, guidance=0.0,
                              width=SIZE, height=SIZE)  # fmt: skip
    fresh = make_scheduler(turbo.pipe.scheduler.config, scheduler, 8, timestep_spacing="trailing")
    fresh.set_timesteps(steps)
    assert fresh.timesteps[0] == 999
    assert_equals_plain_pipeline(turbo, request, fresh)


@pytest.mark.parametrize(
    ("name", "few_step"),
    [("sdxl-lightning-4step", True), ("Hyper-SDXL-8steps", True), ("dreamshaper-xl-turbo", True),
     ("hyperrealism-xl", False), ("juggernaut-xl", False)],
)  # fmt: skip
def test_few_step_distills_are_told_by_their_names(sdxl: LoadedModel, name: str, few_step: bool) -> None:
    info = family_for(sdxl.pipe, ModelSpec(name=name.lower(), source="tiny-sdxl"), sdxl.device, sdxl.dtype).info()
    assert (info.default_steps == 4) is few_step and (info.compare_steps == (1, 2, 3, 4, 6, 8)) is few_step


@pytest.mark.parametrize(("name", "few_step"), [("my-distill", True), ("sdxl-turbo-lookalike", False)])
def test_the_registry_says_a_model_is_a_few_step_distill_whatever_its_name(
    sdxl: LoadedModel, name: str, few_step: bool
) -> None:
    spec = ModelSpec(name=name, source="tiny-sdxl", few_step=few_step)
    family = family_for(sdxl.pipe, spec, sdxl.device, sdxl.dtype)
    info = family.info()
    assert (info.default_steps == 4) is few_step and ("LCM" in info.schedulers) is few_step
    first = float(family.new_scheduler("Euler", 1, 0, SIZE, SIZE).timesteps[0])
    assert (first == 999) is few_step, "trailing timesteps for distills, the base config's leading otherwise"


def test_lcm_is_offered_to_few_step_models_only(sdxl: LoadedModel, turbo: LoadedModel) -> None:
    assert "LCM" in turbo.info.schedulers and "LCM" not in sdxl.info.schedulers


def test_an_lcm_model_defaults_to_the_lcm_scheduler_at_guidance_1(sdxl: LoadedModel) -> None:
    spec = ModelSpec(name="sdxl-lcm-merge", source="tiny-sdxl")
    info = family_for(sdxl.pipe, spec, sdxl.device, sdxl.dtype).info()
    assert (info.default_scheduler, info.default_steps, info.default_guidance) == ("LCM", 4, 1.0)

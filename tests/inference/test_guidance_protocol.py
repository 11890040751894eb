"""/compare-guidance on the wire: its lanes, its checks, and the models whose guidance can't change the image
(FLUX.1-schnell, Turbo at 0, LCM-LoRA at 1, a few-step LoRA), each refused in one line."""

from __future__ import annotations

import dataclasses

import pytest

from inference.model_info import GUIDANCE_IGNORED, GUIDANCE_INPUT, LoraInfo, ModelInfo
from inference.requests import SCHEDULER_NAMES, CompareGuidanceRequest, CompareStepsRequest, InvalidRequest
from inference.validation import validate, validate_for_model

SD = ModelInfo("sd15", "sd", SCHEDULER_NAMES, "Euler a", 30, 7.5, (5, 10), 512, 8)
TURBO = dataclasses.replace(SD, name="sdxl-turbo", family="sdxl", default_steps=4, default_guidance=0.0)
LCM_LORA = dataclasses.replace(SD, name="lcm-merged", default_scheduler="LCM", default_steps=4, default_guidance=1.0)
LCM_DISTILLED = dataclasses.replace(SD, name="lcm-dreamshaper", default_guidance=8.5, guidance_mode=GUIDANCE_INPUT)
SCHNELL = dataclasses.replace(SD, name="schnell", family="flux", default_guidance=0.0, guidance_mode=GUIDANCE_IGNORED)
FLUX_DEV = dataclasses.replace(SD, name="flux-dev", family="flux", default_guidance=3.5, guidance_mode=GUIDANCE_INPUT)
FEW_STEP = LoraInfo("lcm-lora", few_step=True, default_steps=4, default_scheduler="LCM", default_guidance=1.0)
SD_WITH_LORA = dataclasses.replace(SD, loras=(FEW_STEP,))


def grid(**changes: object) -> CompareGuidanceRequest:
    return dataclasses.replace(
        CompareGuidanceRequest("a fox", guidances=(1.0, 3.0, 7.5), steps=(4, 8), scheduler="Euler", seed=3), **changes
    )


def test_lanes_run_row_by_row_each_at_its_columns_guidance() -> None:
    request = grid()
    assert request.lane_steps == (4, 4, 4, 8, 8, 8)
    assert request.lane_guidances == (1.0, 3.0, 7.5, 1.0, 3.0, 7.5)
    assert request.lane_seeds == (3,) * 6 and request.lane_schedulers == ("Euler",) * 6
    assert request.guidance == 1.0


@pytest.mark.parametrize(
    ("model", "why"),
    [
        (SCHNELL, "The model schnell (flux) is distilled without guidance: every value gives the same image"),
        (TURBO, "The model sdxl-turbo is a few-step distill that runs without guidance (at 0)"),
        (LCM_LORA, "The model lcm-merged is a few-step distill that runs without guidance (at 1)"),
    ],
)
def test_a_model_that_ignores_guidance_is_refused_in_one_line_saying_why(model: ModelInfo, why: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        validate_for_model(grid(model=model.name), model)
    assert str(refused.value).startswith(why) and str(refused.value).endswith("compare steps or schedulers instead.")
    assert "\n" not in str(refused.value)


def test_a_few_step_lora_that_runs_without_guidance_is_refused_by_name() -> None:
    with pytest.raises(InvalidRequest, match="The LoRA lcm-lora is a few-step distill that runs without guidance"):
        validate_for_model(grid(loras=(("lcm-lora", 1.0),)), SD_WITH_LORA)


@pytest.mark.parametrize("model", [SD, FLUX_DEV, LCM_DISTILLED])
def test_models_whose_guidance_changes_the_image_are_swept(model: ModelInfo) -> None:
    validate_for_model(grid(guidances=(2.0, 3.5, 6.0)), model)


def test_two_values_without_cfg_are_refused_on_a_cfg_model_but_not_on_flux_dev() -> None:
    request = grid(guidances=(0.0, 1.0, 5.0))
    with pytest.raises(InvalidRequest, match="Guidance 0 and 1 run without classifier-free guidance"):
        validate_for_model(request, SD)
    validate_for_model(request, FLUX_DEV)  # its distilled guidance is an input: 0 and 1 differ


def test_a_negative_prompt_is_taken_when_one_value_is_above_1() -> None:
    validate_for_model(grid(negative_prompt="blur", guidances=(1.0, 5.0)), SD)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"guidances": (3.0,)}, "needs at least 2 guidance values; got 1."),
        ({"guidances": (3.0, 3.0)}, "Guidance 3 is in the list twice"),
        ({"guidances": (3.0, float("nan"))}, "guidance must be 0 to 30; got nan."),
        ({"guidances": (3.0, 31.0)}, "guidance must be 0 to 30; got 31."),
        ({"steps": (4, 4)}, "4 steps is in the list twice"),
        ({"steps": ()}, "1 to 6 step counts (rows); got 0."),
        ({"steps": (1, 2, 3, 4, 5)}, "at most 12 cells; 3 guidance values × 5 step counts would be 15: give fewer."),
    ],
)
def test_a_bad_guidance_grid_is_refused_naming_the_value(changes: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        validate(grid(**changes))
    assert message in str(refused.value)


def test_stop_early_from_an_input_image_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="stop early follows runs from noise: leave out the image"):
        validate(CompareStepsRequest("a fox", steps=(2, 4), stop_early=True, image=b"\x89PNG"))

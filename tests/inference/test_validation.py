"""Validation of requests before they are queued: each message names the value and the range."""

from __future__ import annotations

import dataclasses
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inference.model_info import LoraInfo, ModelInfo, ModelUnavailable
from inference.requests import (
    MAX_STEPS,
    SCHEDULER_NAMES,
    CompareStepsRequest,
    GenerateRequest,
    HiresFix,
    InvalidRequest,
)
from inference.validation import parse_step_list, validate, validate_for_model
from tests.inference.protocol_samples import FLUX, FLUX_DEV, GOOD, PNG, SDXL_TURBO, strength_grid


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"steps": 0}, "steps must be 1 to 150; got 0."),
        ({"steps": 500}, "steps must be 1 to 150; got 500."),
        ({"guidance": 31.0}, "guidance must be 0 to 30; got 31."),
        ({"guidance": float("nan")}, "guidance must be 0 to 30"),
        ({"width": 513}, "width must be a multiple of 8 from 256 to 2048; got 513."),
        ({"height": 4096}, "height must be a multiple of 8 from 256 to 2048; got 4096."),
        ({"height": 2048, "width": 2048}, "2048x2048 is too many pixels; at most 2,359,296"),
        ({"count": 5}, "count must be 1 to 4; got 5."),
        ({"prompt": "   "}, "The prompt is empty"),
        ({"scheduler": "Turbo"}, "Unknown scheduler 'Turbo'; choose one of: Euler, "),
        ({"scheduler": "Eular a"}, "Unknown scheduler 'Eular a' (did you mean 'Euler a'?); choose one of: Euler, "),
        ({"scheduler": "dpm++ 2m karas"}, "(did you mean 'DPM++ 2M Karras'?)"),
        ({"scheduler": "Eulerish"}, "Unknown scheduler 'Eulerish' (did you mean 'Euler'?); choose one of: Euler, "),
        ({"scheduler": "Warp Drive"}, "Unknown scheduler 'Warp Drive'; choose one of: Euler, "),
        ({"seed": -1}, "seed must be 0 to 4294967295; got -1."),
    ],
)
def test_bad_generate_values_are_refused_with_the_range(change: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidRequest) as error:
        validate(dataclasses.replace(GOOD, **change))  # type: ignore[arg-type]
    assert message in str(error.value)


def test_compare_steps_cell_count_and_duplicates() -> None:
    with pytest.raises(InvalidRequest, match="2 to 12 step counts; got 13"):
        validate(CompareStepsRequest("fox", steps=tuple(range(1, 14))))
    with pytest.raises(InvalidRequest, match="2 to 12 step counts; got 1"):
        validate(CompareStepsRequest("fox", steps=(10,)))
    with pytest.raises(InvalidRequest, match=r"^10 steps is in the list twice; give each step count once\.$"):
        validate(CompareStepsRequest("fox", steps=(5, 10, 10, 50)))
    with pytest.raises(InvalidRequest, match="steps must be 1 to 150; got 151"):
        validate(CompareStepsRequest("fox", steps=(10, 151)))


def test_step_list_parsing_shows_the_expected_form() -> None:
    assert parse_step_list("5, 10,20") == (5, 10, 20)
    assert parse_step_list("50 40 5") == parse_step_list("50;40; 5") == (50, 40, 5)
    with pytest.raises(InvalidRequest, match="like 5,10,20,30"):
        parse_step_list("5,x,10")
    with pytest.raises(InvalidRequest, match="No step counts"):
        parse_step_list(" , ")


@given(
    steps=st.integers(1, MAX_STEPS),
    scheduler=st.sampled_from(SCHEDULER_NAMES),
    size=st.integers(32, 128).map(lambda n: n * 8),
    guidance=st.floats(0, 30),
    count=st.integers(1, 4),
)
def test_every_request_inside_the_ranges_is_accepted(
    steps: int, scheduler: str, size: int, guidance: float, count: int
) -> None:
    validate(
        GenerateRequest(
            "fox",
            steps=steps,
            scheduler=scheduler,
            seed=0,
            guidance=guidance,
            width=size,
            height=size,
            negative_prompt="",
            count=count,
        )
    )


@pytest.mark.parametrize(
    ("model", "change", "message"),
    [
        (FLUX, {"scheduler": "Euler a"},
         "The model flux can't run the scheduler 'Euler a'; choose one of: Euler, Heun, DPM++ 2M, UniPC."),
        (FLUX, {"scheduler": "Euler", "width": 1032}, "width must be a multiple of 16 for the model flux; got 1032."),
        (FLUX, {"scheduler": "Euler", "negative_prompt": "blur"},
         "The model flux (flux) doesn't use a negative prompt; leave it out."),
        (SDXL_TURBO, {"steps": 9}, "steps must be at most 8 for the model sdxl-turbo; got 9."),
        (dataclasses.replace(SDXL_TURBO, name="sdxl", schedulers=("Euler", "Euler a")), {"scheduler": "LCM"},
         "The model sdxl can't run the scheduler 'LCM' (it is for LCM and other few-step distills); "
         "choose one of: Euler, Euler a."),
        (FLUX, {"scheduler": "Euler", "guidance": 7.0},
         "The model flux (flux) ignores guidance; leave it out (got 7)."),
        (FLUX_DEV, {"scheduler": "Euler", "guidance": 3.5, "negative_prompt": "blur"},
         "The model flux-dev (flux) doesn't use a negative prompt; leave it out."),
        (SDXL_TURBO, {"steps": 4, "guidance": 0.0, "negative_prompt": "blur"},
         "A negative prompt takes effect only with guidance above 1; got guidance 0 with the model sdxl-turbo: "
         "leave the negative prompt out or raise guidance."),
    ],
)  # fmt: skip
def test_what_a_model_cant_do_is_refused_in_one_line(model: ModelInfo, change: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidRequest) as error:
        validate_for_model(dataclasses.replace(GOOD, **change), model)  # type: ignore[arg-type]
    assert str(error.value) == message


def test_what_a_model_can_do_passes() -> None:
    validate_for_model(GenerateRequest("fox", steps=4, scheduler="Euler", guidance=0.0, width=1024, height=768), FLUX)
    validate_for_model(GenerateRequest("fox", steps=4, scheduler="Euler", guidance=6.0), FLUX_DEV)
    # A few-step model at guidance above 1 runs classifier-free guidance, so its negative prompt counts.
    validate_for_model(GenerateRequest("fox", steps=4, guidance=2.0, negative_prompt="blur"), SDXL_TURBO)
    validate_for_model(CompareStepsRequest("fox", steps=(1, 2, 8), width=1024, height=1024), SDXL_TURBO)


def test_sdxl_and_flux_sizes_fit_and_the_pixel_cap_holds() -> None:
    validate(GenerateRequest("fox", width=1024, height=1024))
    validate(GenerateRequest("fox", width=2048, height=1024))
    with pytest.raises(InvalidRequest, match="too many pixels"):
        validate(GenerateRequest("fox", width=2048, height=1536))


@pytest.mark.parametrize(
    ("loras", "message"),
    [
        ((("a", 2.5),), "weight of the LoRA 'a' must be -2 to 2; got 2.5"),
        ((("a", float("nan")),), "must be a number"),
        ((("a", 1.0), ("a", 0.5)), "The LoRA 'a' is given twice"),
        (tuple((f"l{i}", 1.0) for i in range(5)), "At most 4 LoRAs at once; got 5"),
    ],
)
def test_bad_loras_are_refused_with_one_line(loras: tuple[tuple[str, float], ...], message: str) -> None:
    with pytest.raises(InvalidRequest, match=re.escape(message)):
        validate(GenerateRequest("a fox", loras=loras))


def test_a_lora_the_model_lacks_is_refused_with_the_close_names_or_that_it_has_none() -> None:
    info = ModelInfo("sd15", "sd", SCHEDULER_NAMES, "Euler a", 30, 7.5, (5, 10), 512, 8,
                     loras=(LoraInfo("pixel-art"), LoraInfo("watercolor")),
                     unavailable_loras=(ModelUnavailable("broken", "the file can't be read."),))  # fmt: skip
    with pytest.raises(InvalidRequest, match=r"Unknown LoRA 'pixelart' for the model sd15 \(close: pixel-art\)"):
        validate_for_model(GenerateRequest("a fox", loras=(("pixelart", 1.0),)), info)
    with pytest.raises(InvalidRequest, match="didn't load on this worker: the file can't be read"):
        validate_for_model(GenerateRequest("a fox", loras=(("broken", 1.0),)), info)
    bare = ModelInfo("sd15", "sd", SCHEDULER_NAMES, "Euler a", 30, 7.5, (5, 10), 512, 8)
    with pytest.raises(InvalidRequest, match="The model sd15 has no LoRAs"):
        validate_for_model(GenerateRequest("a fox", loras=(("pixel", 1.0),)), bare)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"strength": 1.5}, "strength must be 0 to 1; got 1.5."),
        ({"strength": -0.1}, "strength must be 0 to 1; got -0.1."),
        ({"strength": float("nan")}, "strength must be 0 to 1"),
        ({"strength": 0.0}, "At strength 0, 30 steps run no step over the image; raise the strength or the steps"),
        ({"image": b"GIF89a..."}, "The input image must be a PNG."),
        ({"film": True}, "A steps film starts from noise: leave out the input image, or the film."),
    ],
)
def test_a_bad_img2img_request_names_the_value(change: dict[str, object], message: str) -> None:
    request = dataclasses.replace(GOOD, **{"image": PNG, "strength": 0.6, **change})  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match=re.escape(message)):
        validate(request)


@pytest.mark.parametrize(
    ("hires", "message"),
    [
        (HiresFix(steps=0), "hires steps must be 1 to 150; got 0."),
        (HiresFix(steps=10, strength=0.0), "hires strength must be above 0, at most 1; got 0."),
        (HiresFix(steps=10, upscaler="ESRGAN"), "Unknown upscaler 'ESRGAN'; choose one of: Lanczos."),
        (HiresFix(steps=10, scale=3), "The hires pass upscales x2; got x3."),
    ],
)
def test_a_bad_hires_pass_names_the_value(hires: HiresFix, message: str) -> None:
    with pytest.raises(InvalidRequest, match=re.escape(message)):
        validate(dataclasses.replace(GOOD, hires=hires))


def test_a_hires_pass_that_would_exceed_the_size_cap_is_refused_before_it_runs() -> None:
    request = dataclasses.replace(GOOD, width=1024, height=1024, hires=HiresFix(steps=10))
    with pytest.raises(InvalidRequest, match=r"Upscaled x2, 1024x1024 would be 2048x2048"):
        validate(request)
    validate(dataclasses.replace(request, width=512, height=512))


def test_an_img2img_request_reaches_a_redis_agent_with_its_input_image_and_hires_pass() -> None:
    from inference.queues import wire

    png = PNG + bytes(range(256)) * 64
    request = dataclasses.replace(GOOD, image=png, strength=0.4, hires=HiresFix(steps=9, strength=0.3))
    assert wire.loads(wire.dumps(request)) == request


# --- /compare-strength -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"image": b""}, "A strength comparison starts from an image: attach one."),
        ({"strengths": (0.5,)}, "A strength comparison needs 2 to 6 strengths; got 1."),
        ({"strengths": (0.5, 0.5)}, "Strength 0.5 is in the list twice; give each strength once."),
        ({"strengths": (0.5, 1.5)}, "strength must be 0 to 1; got 1.5."),
        ({"steps": (10, 10)}, "10 steps is in the list twice; give each step count once."),
        ({"steps": (4, 8, 12, 16, 20)}, "A strength comparison takes 1 to 4 step counts; got 5."),
        (
            {"strengths": (0.2, 0.4, 0.6, 0.8), "steps": (10, 20, 30, 40)},
            "A comparison grid has at most 12 cells; 4 strengths × 4 step counts would be 16: give fewer of either.",
        ),
        (
            {"strengths": (0.0, 0.5), "steps": (4, 20)},
            "At strength 0, 4 steps run no step over the image; raise the strength or the steps "
            "(strength × steps must reach 1).",
        ),
    ],
)
def test_a_bad_strength_grid_is_refused_in_one_line(fields: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        validate(strength_grid(**fields))
    assert str(caught.value) == message


def test_a_strength_grid_cell_too_weak_for_an_sd_model_is_refused_for_that_model() -> None:
    sd = ModelInfo("sd15", "sd", SCHEDULER_NAMES, "Euler a", 30, 7.5, (5, 10), 512, 8)
    request = strength_grid(strengths=(0.1, 0.5), steps=(4, 20))
    validate(request)  # SD 3 and FLUX would run one step of it
    with pytest.raises(InvalidRequest, match=r"^At strength 0.1, 4 steps run no step over the image; raise"):
        validate_for_model(request, sd)


@pytest.mark.parametrize("scheduler", ["Euler a", "DPM++ 2M SDE", "LCM"])
def test_auto_steps_on_a_scheduler_that_never_settles_is_refused_in_one_line(scheduler: str) -> None:
    with pytest.raises(
        InvalidRequest, match=re.escape(f"steps: auto stops when the image settles, and {scheduler} adds")
    ):
        validate(GenerateRequest("a fox", steps=50, scheduler=scheduler, auto_steps=True))


def test_auto_steps_with_a_film_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="steps: auto is for text-to-image runs: leave out a steps film"):
        validate(GenerateRequest("a fox", steps=50, scheduler="Euler", auto_steps=True, film=True))

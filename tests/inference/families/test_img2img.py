"""img2img lanes of every family: a lane that starts part-way down its schedule from the encoded input
image equals the family's own diffusers img2img pipeline (built with `from_pipe` from the same tiny
pipeline), alone and in a batch shared with text-to-image and other img2img lanes."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from diffusers import (
    FluxImg2ImgPipeline,
    StableDiffusion3Img2ImgPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionXLImg2ImgPipeline,
)

from inference.models.loading import LoadedModel
from inference.protocol import JobResult
from inference.requests import CompareStepsRequest, GenerateRequest, img2img_steps
from inference.schedulers import make_scheduler
from tests.inference.conftest import LoadTestModel
from tests.inference.families.checks import (
    assert_img2img_equals_plain_pipeline,
    assert_mixed_batch_equals_alone,
    input_png,
    neighbours_for,
)
from tests.inference.lanes import RecordingEngine

SIZE = 64
FLOW = {"tiny-sd3", "tiny-flux", "tiny-flux-dev"}
PIPELINES: dict[str, Any] = {
    "tiny": StableDiffusionImg2ImgPipeline,
    "tiny-sdxl": StableDiffusionXLImg2ImgPipeline,
    "tiny-sd3": StableDiffusion3Img2ImgPipeline,
    "tiny-flux": FluxImg2ImgPipeline,
    "tiny-flux-dev": FluxImg2ImgPipeline,
}


@pytest.fixture(scope="module")
def models(load_test_model: LoadTestModel) -> dict[str, LoadedModel]:
    return {name: load_test_model(name) for name in PIPELINES}


def _request(model: LoadedModel, scheduler: str, strength: float, guidance: float, **more: Any) -> GenerateRequest:
    values: dict[str, Any] = {"steps": 5, "seed": 77, "width": SIZE, "height": SIZE, **more}
    image = input_png(values["width"], values["height"])
    return GenerateRequest("a red fox", scheduler=scheduler, guidance=guidance, image=image, strength=strength,
                           model=model.name, **values)  # fmt: skip


def _call_options(model: LoadedModel, request: GenerateRequest) -> dict[str, Any]:
    if model.name in FLOW:
        options: dict[str, Any] = {"height": request.height, "width": request.width}
        if model.name != "tiny-sd3":
            options["max_sequence_length"] = model.family.max_sequence_length  # type: ignore[attr-defined]
        return options
    return {"negative_prompt": request.negative_prompt or None}


@pytest.mark.parametrize(
    ("name", "scheduler", "strength", "guidance"),
    [
        ("tiny", "Euler a", 0.6, 7.5),  # batched Euler a, started at index 2
        ("tiny", "DPM++ 2M Karras", 0.5, 7.5),  # a late start steps DPM++ 2M per lane
        ("tiny", "Heun", 0.7, 3.0),  # second order: the start index counts both calls per step
        ("tiny", "UniPC", 0.9, 1.0),  # one row, no CFG
        ("tiny", "Euler", 1.0, 7.5),  # strength 1: the whole schedule, from the noised image
        ("tiny-sdxl", "Euler", 0.6, 5.0),
        ("tiny-sdxl", "Euler a", 0.5, 0.0),  # Turbo-style: one row per lane
        ("tiny-sdxl", "DPM++ 2M", 0.8, 6.0),
        ("tiny-sd3", "Euler", 0.55, 7.0),  # 5 x 0.55 = 2.75: SD 3 starts at int(2.25) = 2, three steps run
        ("tiny-sd3", "Euler", 0.3, 1.0),
        ("tiny-flux", "Euler", 0.6, 0.0),
        ("tiny-flux-dev", "Euler", 0.75, 3.5),
    ],
)
def test_an_img2img_lane_matches_the_familys_own_img2img_pipeline(
    models: dict[str, LoadedModel], name: str, scheduler: str, strength: float, guidance: float
) -> None:
    model = models[name]
    request = _request(model, scheduler, strength, guidance)
    fresh = make_scheduler(model.pipe.scheduler.config, scheduler, 77, flow=name in FLOW)
    assert_img2img_equals_plain_pipeline(model, request, fresh, PIPELINES[name], **_call_options(model, request))


def test_an_sdxl_img2img_lane_of_another_aspect_matches_its_pipeline(models: dict[str, LoadedModel]) -> None:
    model = models["tiny-sdxl"]
    request = _request(model, "Euler a", 0.6, 5.0, width=2 * SIZE, negative_prompt="blurry")
    fresh = make_scheduler(model.pipe.scheduler.config, "Euler a", 77)
    assert_img2img_equals_plain_pipeline(model, request, fresh, PIPELINES["tiny-sdxl"], negative_prompt="blurry")


@pytest.mark.parametrize(
    ("name", "scheduler", "guidance"),
    [("tiny", "Euler a", 7.5), ("tiny", "DPM++ 2M", 7.5), ("tiny-sdxl", "Euler", 0.0), ("tiny-sd3", "Euler", 5.0),
     ("tiny-flux", "Euler", 0.0), ("tiny-flux-dev", "Euler", 3.5)],
)  # fmt: skip
def test_an_img2img_lane_in_a_batch_with_text_to_image_lanes_equals_itself_alone(
    models: dict[str, LoadedModel], name: str, scheduler: str, guidance: float
) -> None:
    model = models[name]
    subject = _request(model, scheduler, 0.6, guidance, steps=6)
    neighbours = neighbours_for(SIZE, scheduler, (guidance, guidance))
    other_image = dataclasses.replace(
        subject, prompt="a boat", image=input_png(SIZE, SIZE, seed=3), strength=0.8, seed=4, count=2
    )
    assert_mixed_batch_equals_alone(model, subject, [*neighbours, other_image])


def test_img2img_lanes_encode_their_images_in_one_vae_call_and_report_the_steps_that_ran(
    models: dict[str, LoadedModel],
) -> None:
    model = models["tiny"]
    engine = RecordingEngine(model)
    calls: list[int] = []
    encode = model.family.encode_images

    def counting(pixels: Any) -> Any:
        calls.append(len(pixels))
        return encode(pixels)

    model.family.encode_images = counting  # type: ignore[method-assign]
    try:
        engine.add_job("a", _request(model, "Euler a", 0.6, 7.5, steps=10, count=2))
        engine.add_job("b", _request(model, "Euler", 0.3, 7.5, steps=10))
        engine.add_job("text", GenerateRequest("a cat", steps=4, scheduler="Euler", width=SIZE, height=SIZE))
        engine.run_until_idle()
    finally:
        del model.family.encode_images
    # Both jobs' lanes are due at once (the longest job sets the clock only within a job): one encode of both.
    assert calls == [2]
    result_a, result_b = engine.result("a"), engine.result("b")
    assert [image.steps_run for image in result_a.images] == [6, 6] and result_a.steps_run == 12
    assert (result_b.images[0].steps, result_b.images[0].steps_run) == (10, 3)
    assert engine.result("text").steps_run == 4


def test_a_compare_steps_grid_can_start_every_cell_from_an_image(models: dict[str, LoadedModel]) -> None:
    model = models["tiny"]
    engine = RecordingEngine(model)
    request = CompareStepsRequest("a fox", steps=(4, 8, 10), scheduler="Euler", width=SIZE, height=SIZE,
                                  image=input_png(SIZE, SIZE), strength=0.5)  # fmt: skip
    engine.add_job("grid", request)
    engine.run_until_idle()
    result = engine.result("grid")
    assert isinstance(result, JobResult)
    assert [image.steps_run for image in result.images] == [img2img_steps(n, 0.5, flow=False) for n in (4, 8, 10)]


def test_an_unreadable_input_image_is_refused_before_any_lane_is_made(models: dict[str, LoadedModel]) -> None:
    from inference.engine.input_image import UnreadableImage

    model = models["tiny"]
    engine = RecordingEngine(model)
    broken = _request(model, "Euler", 0.5, 7.5)
    broken = dataclasses.replace(broken, image=broken.image[:40])  # a truncated PNG
    with pytest.raises(UnreadableImage, match="could not be read as an image"):
        engine.add_job("broken", broken)
    assert engine.idle

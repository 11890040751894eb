"""The hires fix and Upscale x2 inside one job: a first pass (or the input image), a Lanczos resize x2
in pixel space, then an img2img pass of its own steps and strength at the larger size; the second
pass equals the family's own diffusers img2img pipeline run on the resized first-pass image."""

from __future__ import annotations

import dataclasses
import io
from typing import Any

import pytest
import torch
from diffusers import FluxImg2ImgPipeline, StableDiffusionImg2ImgPipeline, StableDiffusionXLImg2ImgPipeline
from PIL import Image

from inference.models.loading import LoadedModel
from inference.parameters import PNG_KEY
from inference.requests import GenerateRequest, HiresFix, img2img_steps
from inference.schedulers import make_scheduler
from tests.a1111 import parse_generation_parameters
from tests.inference.conftest import LoadTestModel
from tests.inference.families.checks import TOLERANCE, input_png
from tests.inference.lanes import RecordingEngine, relative_error

SIZE = 64
PIPELINES: dict[str, Any] = {
    "tiny": StableDiffusionImg2ImgPipeline,
    "tiny-sdxl": StableDiffusionXLImg2ImgPipeline,
    "tiny-flux-dev": FluxImg2ImgPipeline,
}


@pytest.fixture(scope="module")
def models(load_test_model: LoadTestModel) -> dict[str, LoadedModel]:
    return {name: load_test_model(name) for name in PIPELINES}


def _second_pass(model: LoadedModel, request: GenerateRequest, first: bytes) -> torch.Tensor:
    """The family's own img2img pipeline on the first-pass image resized x2 with Lanczos."""
    assert request.hires is not None
    width, height = request.output_size
    image = Image.open(io.BytesIO(first)).convert("RGB").resize((width, height), Image.Resampling.LANCZOS)
    flow = model.info.family == "flux"
    plain = PIPELINES[model.name].from_pipe(
        model.pipe, scheduler=make_scheduler(model.pipe.scheduler.config, request.scheduler, request.seed, flow=flow)
    )
    plain.set_progress_bar_config(disable=True)
    options: dict[str, Any] = {"height": height, "width": width, "max_sequence_length": 512} if flow else {}
    latents: torch.Tensor = plain(
        request.prompt,
        image=image,
        strength=request.hires.strength,
        num_inference_steps=request.hires.steps,
        guidance_scale=request.guidance,
        generator=torch.Generator("cpu").manual_seed(request.seed),
        output_type="latent",
        **options,
    ).images
    return latents


@pytest.mark.parametrize(
    ("name", "scheduler", "guidance"),
    [("tiny", "Euler a", 7.5), ("tiny-sdxl", "Euler", 5.0), ("tiny-flux-dev", "Euler", 3.5)],
)
def test_a_hires_job_is_its_first_pass_resized_then_the_familys_img2img_pipeline(
    models: dict[str, LoadedModel], name: str, scheduler: str, guidance: float
) -> None:
    model = models[name]
    first = GenerateRequest("a red fox", steps=4, scheduler=scheduler, seed=21, guidance=guidance,
                            width=SIZE, height=SIZE, model=name)  # fmt: skip
    hires = dataclasses.replace(first, hires=HiresFix(steps=6, strength=0.5))
    engine = RecordingEngine(model)
    engine.add_job("first", first)
    engine.add_job("hires", hires)
    engine.add_job("beside", dataclasses.replace(first, prompt="a boat", seed=3, count=2))
    engine.run_until_idle()
    first_png = engine.result("first").images[0].png
    assert relative_error(engine.final_latents[("hires", 0)], _second_pass(model, hires, first_png)) <= TOLERANCE
    image = engine.result("hires").images[0]
    assert (image.width, image.height) == (2 * SIZE, 2 * SIZE)
    assert Image.open(io.BytesIO(image.png)).size == (2 * SIZE, 2 * SIZE)
    ran = img2img_steps(6, 0.5, flow=name == "tiny-flux-dev")
    assert (image.steps, image.steps_ran, image.first_pass_steps, image.steps_run) == (6, ran, 4, 4 + ran)
    assert engine.result("hires").steps_run == 4 + ran
    fields = parse_generation_parameters(Image.open(io.BytesIO(image.png)).text[PNG_KEY])
    assert (fields["Size-1"], fields["Size-2"], fields["Steps"]) == (str(SIZE), str(SIZE), "4")
    assert (fields["Hires upscale"], fields["Hires steps"], fields["Hires upscaler"]) == ("2", "6", "Lanczos")
    assert fields["Denoising strength"] == "0.5"


def test_upscale_runs_only_the_hires_pass_over_the_input_image(models: dict[str, LoadedModel]) -> None:
    model = models["tiny"]
    png = input_png(SIZE, SIZE)
    request = GenerateRequest("a red fox", steps=30, scheduler="Euler", seed=8, width=SIZE, height=SIZE,
                              image=png, hires=HiresFix(steps=5, strength=0.6))  # fmt: skip
    engine = RecordingEngine(model)
    engine.add_job("up", request)
    engine.run_until_idle()
    assert relative_error(engine.final_latents[("up", 0)], _second_pass(model, request, png)) <= TOLERANCE
    image = engine.result("up").images[0]
    assert (image.width, image.height, image.steps_run, image.first_pass_steps) == (2 * SIZE, 2 * SIZE, 3, 0)
    assert set(engine.batch_sizes) == {1}, "no first pass ran"

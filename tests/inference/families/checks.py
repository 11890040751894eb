"""The two checks every family must pass: a lane in a mixed batch equals itself alone, and equals
the family's own diffusers pipeline called with the same seed, steps, scheduler and guidance."""

from __future__ import annotations

from typing import Any

import torch

from inference.models.loading import LoadedModel
from inference.requests import CompareStepsRequest, GenerateRequest, Request
from inference.schedulers import Scheduler
from tests.inference.lanes import RecordingEngine, relative_error, run_alone

TOLERANCE = 1e-4  # relative error, float32 on CPU


def assert_mixed_batch_equals_alone(model: LoadedModel, subject: GenerateRequest, neighbours: list[Request]) -> None:
    """Run the subject with neighbours sharing its denoiser calls, then alone: the same latents."""
    alone = run_alone(model, subject)
    engine = RecordingEngine(model)
    engine.add_job("neighbour-0", neighbours[0])
    engine.add_job("subject", subject)
    for number, request in enumerate(neighbours[1:], start=1):
        engine.add_job(f"neighbour-{number}", request)
    engine.run_until_idle()
    assert max(engine.batch_sizes) >= 3, "the subject must have shared denoiser calls with other lanes"
    assert relative_error(engine.final_latents[("subject", 0)], alone) <= TOLERANCE
    image = engine.result("subject").images[0]
    assert (image.width, image.height) == (subject.width, subject.height)


def assert_equals_plain_pipeline(
    model: LoadedModel, request: GenerateRequest, scheduler: Scheduler, **call: Any
) -> None:
    """The lane's final latents equal `type(pipe)(...)(...)` with a fresh scheduler of the same kind."""
    ours = run_alone(model, request)
    pipe = model.pipe
    plain = type(pipe)(**{**pipe.components, "scheduler": scheduler})
    plain.set_progress_bar_config(disable=True)
    theirs = plain(
        request.prompt,
        num_inference_steps=request.steps,
        guidance_scale=request.guidance,
        height=request.height,
        width=request.width,
        generator=torch.Generator("cpu").manual_seed(request.seed),
        output_type="latent",
        **call,
    ).images
    assert relative_error(ours, theirs) <= TOLERANCE
    assert type(pipe.scheduler) is type(model.pipe.scheduler), "the pipeline's own scheduler is never replaced"


def neighbours_for(size: int, scheduler: str, guidances: tuple[float, float]) -> list[Request]:
    """Jobs of other lengths, seeds, schedulers-kind and guidance to share a batch with."""
    return [
        GenerateRequest("a castle", steps=7, scheduler=scheduler, seed=9, guidance=guidances[0],
                        width=size, height=size, count=2),
        CompareStepsRequest("a boat", steps=(2, 4, 5), scheduler=scheduler, seed=5, guidance=guidances[1],
                            width=size, height=size),
    ]  # fmt: skip


def input_png(width: int, height: int, seed: int = 0) -> bytes:
    """A deterministic input image with some structure (gradients and a disc), as PNG bytes."""
    import io

    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:height, 0:width]
    red = 255 * x / max(width - 1, 1)
    green = 255 * y / max(height - 1, 1)
    blue = np.where((x - width / 2) ** 2 + (y - height / 2) ** 2 < (min(width, height) / 3) ** 2, 200, 40)
    pixels = np.stack([red, green, (blue + 37 * seed) % 256], axis=-1).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def assert_img2img_equals_plain_pipeline(
    model: LoadedModel, request: Request, scheduler: Scheduler, pipeline_class: Any, **call: Any
) -> None:
    """An img2img lane's final latents equal the family's own diffusers img2img pipeline, built from the
    same components with `from_pipe`, given the same image, strength, seed, steps and scheduler."""
    import io

    from PIL import Image

    assert isinstance(request, GenerateRequest) and request.image
    ours = run_alone(model, request)
    plain = pipeline_class.from_pipe(model.pipe, scheduler=scheduler)
    plain.set_progress_bar_config(disable=True)
    theirs = plain(
        request.prompt,
        image=Image.open(io.BytesIO(request.image)).convert("RGB"),
        strength=request.strength,
        num_inference_steps=request.steps,
        guidance_scale=request.guidance,
        generator=torch.Generator("cpu").manual_seed(request.seed),
        output_type="latent",
        **call,
    ).images
    assert relative_error(ours, theirs) <= TOLERANCE

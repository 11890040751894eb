"""The Steps film in the engine: one frame per step, x0 honestly from the scheduler or computed, the
image itself unchanged, and nothing extra for ordinary jobs. Real tiny random-weight pipelines."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from inference.engine.film import predicted_clean
from inference.models.loading import LoadedModel
from inference.requests import GenerateRequest
from tests.a1111 import parse_generation_parameters
from tests.inference.conftest import LoadTestModel
from tests.inference.lanes import RecordingEngine

SIZE = 128


@pytest.fixture(scope="module")
def tiny(load_test_model: LoadTestModel) -> LoadedModel:
    return load_test_model("tiny")


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


@pytest.mark.parametrize(
    ("scheduler", "source"),
    [("Euler", "scheduler"), ("DPM++ 2M Karras", "epsilon"), ("Heun", "scheduler"), ("UniPC", "epsilon")],
)
def test_a_film_has_one_frame_per_step_and_the_same_final_image(tiny: LoadedModel, scheduler: str, source: str) -> None:
    steps = 5
    request = GenerateRequest("a red fox", steps=steps, scheduler=scheduler, seed=11, width=SIZE, height=SIZE)
    engine = RecordingEngine(tiny)
    engine.add_job("film", GenerateRequest(**{**request.__dict__, "film": True}))
    engine.add_job("plain", request)  # batched alongside: ordinary lanes keep the batched step
    engine.run_until_idle()
    [film], [plain] = engine.result("film").images, engine.result("plain").images
    assert len(film.frames) == steps
    assert film.frames_source == source
    assert plain.frames == () and plain.frames_source == ""
    assert all(Image.open(io.BytesIO(frame)).size == (SIZE, SIZE) for frame in film.frames)
    # Filming a run does not change it: the per-lane `step` matches the batched arithmetic to rounding.
    assert np.abs(pixels(film.png) - pixels(plain.png)).max() <= 1


def test_the_last_frame_is_the_finished_image(tiny: LoadedModel) -> None:
    """At the last step of a deterministic scheduler x0 is the result: the film ends on the image."""
    engine = RecordingEngine(tiny)
    engine.add_job("film", GenerateRequest("fox", steps=4, scheduler="Euler", seed=3, width=SIZE, height=SIZE,
                                           film=True))  # fmt: skip
    engine.run_until_idle()
    [image] = engine.result("film").images
    assert np.abs(pixels(image.frames[-1]) - pixels(image.png)).max() <= 1
    assert np.abs(pixels(image.frames[0]) - pixels(image.png)).mean() > 1, "the first step is still far from it"


@pytest.mark.parametrize("scheduler", ["Euler", "Euler a", "LMS", "DPM2", "Heun", "DPM++ 2M", "UniPC"])
def test_the_computed_x0_equals_the_schedulers_own(tiny: LoadedModel, scheduler: str) -> None:
    """The formula used where a scheduler reports no x0, checked against those that do (DDIM left out:
    it clips its x0), and against the x0 that DPM++ 2M and UniPC compute inside (`convert_model_output`)."""
    family = tiny.family
    sched = family.new_scheduler(scheduler, 6, 0, SIZE, SIZE)
    latents = family.initial_latents(sched, SIZE, SIZE, torch.Generator().manual_seed(0))
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(1))
    for t in list(sched.timesteps)[:3]:
        model_input = family.model_input(sched, latents, t)
        if sched.step_index is None:
            sched._init_step_index(t)
        multistep = scheduler in ("DPM++ 2M", "UniPC")  # they report no x0 from `step`, but compute one
        own = sched.convert_model_output(noise, sample=latents) if multistep else None
        extra = {"generator": torch.Generator().manual_seed(2)} if scheduler.endswith(" a") else {}
        output = sched.step(noise, t, latents, **extra)
        ours, source = predicted_clean(sched, model_input, noise, t, None)
        theirs = own if own is not None else predicted_clean(sched, model_input, noise, t, output)[0]
        assert source == "epsilon"
        assert float((ours - theirs).norm() / theirs.norm()) < 1e-4
        latents = output.prev_sample


def test_a_flow_model_films_x0_computed_from_its_velocity(load_test_model: LoadTestModel) -> None:
    flux = load_test_model("tiny-flux")
    engine = RecordingEngine(flux)
    engine.add_job("film", GenerateRequest("fox", steps=3, scheduler="Euler", seed=5, width=SIZE, height=SIZE,
                                           guidance=0.0, film=True))  # fmt: skip
    engine.run_until_idle()
    [image] = engine.result("film").images
    assert image.frames_source == "flow" and len(image.frames) == 3
    # Flow Euler's last step lands exactly on x - sigma * v: the last frame is the image.
    assert np.abs(pixels(image.frames[-1]) - pixels(image.png)).max() <= 1


def test_every_png_carries_its_parameters(tiny: LoadedModel) -> None:
    engine = RecordingEngine(tiny)
    engine.add_job("two", GenerateRequest("café 狐", steps=2, scheduler="DPM++ 2M Karras", seed=9, width=SIZE,
                                          height=SIZE, count=2, negative_prompt="blurry", guidance=6.5))  # fmt: skip
    engine.run_until_idle()
    for image in engine.result("two").images:
        parsed = parse_generation_parameters(Image.open(io.BytesIO(image.png)).info["parameters"])
        assert parsed["Prompt"] == "café 狐" and parsed["Negative prompt"] == "blurry"
        assert (parsed["Steps"], parsed["Sampler"], parsed["Schedule type"]) == ("2", "DPM++ 2M", "Karras")
        assert (parsed["CFG scale"], parsed["Seed"], parsed["Model"]) == ("6.5", str(image.seed), "tiny")
        assert (parsed["Size-1"], parsed["Size-2"]) == (str(SIZE), str(SIZE))


def test_film_frames_are_decoded_a_batch_at_a_time_while_the_lane_runs(tiny: LoadedModel) -> None:
    decoded: list[int] = []

    class CountingEngine(RecordingEngine):
        def decode(self, latents: torch.Tensor, model: LoadedModel, height: int, width: int) -> np.ndarray:
            decoded.append(latents.shape[0])
            return super().decode(latents, model, height, width)

    engine = CountingEngine(tiny)
    engine.add_job("film", GenerateRequest("fox", steps=19, scheduler="Euler", seed=1, width=SIZE, height=SIZE,
                                           film=True))  # fmt: skip
    for _ in range(10):
        engine.step()
    assert decoded == [8], "the first eight finished frames are decoded before the lane ends"
    engine.run_until_idle()
    assert decoded == [8, 8, 3, 1], "then eight more, the last three, and the image itself"
    assert len(engine.result("film").images[0].frames) == 19

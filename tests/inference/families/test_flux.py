"""FLUX on the random-weight tiny-flux (schnell-like: no guidance input, fixed shift) and
tiny-flux-dev (guidance embedding, resolution-dependent shift): packed latents, one row per lane,
each lane's guidance its own input."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from diffusers import FlowMatchHeunDiscreteScheduler
from diffusers.pipelines.flux.pipeline_flux import calculate_shift

from inference.model_info import GUIDANCE_IGNORED, GUIDANCE_INPUT
from inference.models.loading import LoadedModel
from inference.requests import GenerateRequest
from inference.schedulers import FLOW_SCHEDULERS, make_scheduler
from inference.validation import validate_for_model
from tests.inference.conftest import LoadTestModel
from tests.inference.families.checks import (
    assert_equals_plain_pipeline,
    assert_mixed_batch_equals_alone,
    neighbours_for,
)

SIZE = 64


@pytest.fixture(scope="module")
def schnell(load_test_model: LoadTestModel) -> LoadedModel:
    return load_test_model("tiny-flux")


@pytest.fixture(scope="module")
def dev(load_test_model: LoadTestModel) -> LoadedModel:
    return load_test_model("tiny-flux-dev")


@pytest.mark.parametrize("scheduler", list(FLOW_SCHEDULERS))
@pytest.mark.parametrize("variant", ["schnell", "dev"])
def test_a_lane_in_a_mixed_batch_equals_the_same_lane_alone(
    schnell: LoadedModel, dev: LoadedModel, variant: str, scheduler: str
) -> None:
    model = schnell if variant == "schnell" else dev
    subject = GenerateRequest("a red fox", steps=4, scheduler=scheduler, seed=1234, guidance=3.5,
                              width=SIZE, height=SIZE)  # fmt: skip
    # The neighbours' guidance differs from the subject's: FLUX-dev takes it per row.
    assert_mixed_batch_equals_alone(model, subject, neighbours_for(SIZE, scheduler, (1.5, 6.0)))


class HeunAsFluxPipelineCallsIt(FlowMatchHeunDiscreteScheduler):
    """FluxPipeline passes `sigmas` and `mu`, which FlowMatchHeun doesn't take: this runs Heun with the
    step count those sigmas stand for, its shift set to exp(mu) as the engine sets it."""

    def set_timesteps(  # type: ignore[override]
        self, num_inference_steps: int | None = None, device: Any = None, sigmas: Any = None, mu: Any = None
    ) -> None:
        steps = len(sigmas) if sigmas is not None else num_inference_steps
        assert steps is not None
        super().set_timesteps(steps, device=device)


@pytest.mark.parametrize(
    ("variant", "scheduler", "guidance", "width"),
    [("schnell", "Euler", 0.0, SIZE), ("schnell", "UniPC", 0.0, 2 * SIZE), ("dev", "Euler", 3.5, SIZE),
     ("dev", "Euler", 5.0, 2 * SIZE), ("dev", "DPM++ 2M", 3.5, SIZE), ("dev", "UniPC", 2.0, SIZE),
     ("dev", "Heun", 3.5, SIZE)],
)  # fmt: skip
def test_a_lane_matches_the_plain_flux_pipeline(
    schnell: LoadedModel, dev: LoadedModel, variant: str, scheduler: str, guidance: float, width: int
) -> None:
    model = schnell if variant == "schnell" else dev
    request = GenerateRequest("a red fox", steps=4, scheduler=scheduler, seed=77, guidance=guidance,
                              width=width, height=SIZE)  # fmt: skip
    config = model.pipe.scheduler.config
    if scheduler == "Heun":
        mu = model.family.mu(SIZE, width)  # type: ignore[attr-defined]
        fresh = HeunAsFluxPipelineCallsIt.from_config(config, shift=float(np.exp(mu)))
    else:
        fresh = make_scheduler(config, scheduler, 77, flow=True)
    length = model.family.max_sequence_length  # type: ignore[attr-defined]
    assert_equals_plain_pipeline(model, request, fresh, max_sequence_length=length)


def test_the_timestep_shift_is_flux_pipelines_for_the_image_token_count(dev: LoadedModel) -> None:
    family: Any = dev.family
    assert family.mu(1024, 1024) == pytest.approx(calculate_shift(4096, 256, 4096, 0.5, 1.15))
    assert family.mu(512, 512) == pytest.approx(calculate_shift(1024, 256, 4096, 0.5, 1.15))
    small = family.new_scheduler("Euler", 4, 0, 256, 256).sigmas
    large = family.new_scheduler("Euler", 4, 0, 1024, 1024).sigmas
    assert (large[1:-1] > small[1:-1]).all(), "larger images spend longer at high noise"


def test_schnell_and_dev_are_told_apart_by_the_transformer_config(schnell: LoadedModel, dev: LoadedModel) -> None:
    assert (schnell.info.default_steps, schnell.info.guidance_mode) == (4, GUIDANCE_IGNORED)
    assert schnell.info.compare_steps == (1, 2, 3, 4, 6, 8)
    assert (dev.info.default_steps, dev.info.default_guidance, dev.info.guidance_mode) == (28, 3.5, GUIDANCE_INPUT)
    for info in (schnell.info, dev.info):
        assert info.family == "flux" and info.size_multiple == 16
        assert info.schedulers == ("Euler", "Heun", "DPM++ 2M", "UniPC")


def test_a_scheduler_or_size_flux_cant_do_is_refused_with_what_it_can(schnell: LoadedModel) -> None:
    from inference.requests import InvalidRequest

    with pytest.raises(InvalidRequest, match=r"can't run the scheduler 'DDIM'; choose one of: Euler, Heun, "):
        validate_for_model(GenerateRequest("fox", scheduler="DDIM"), schnell.info)
    with pytest.raises(InvalidRequest, match="width must be a multiple of 16 for the model tiny-flux; got 264"):
        validate_for_model(GenerateRequest("fox", scheduler="Euler", width=264), schnell.info)

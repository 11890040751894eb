"""SD3 on the random-weight tiny-sd3: MMDiT with 2x2 patches, three text encoders, CFG rows, the
FlowMatch schedulers and DPM++ 2M / UniPC with flow sigmas."""

from __future__ import annotations

import pytest

from inference.model_info import GUIDANCE_CFG
from inference.models.loading import LoadedModel
from inference.requests import GenerateRequest
from inference.schedulers import FLOW_SCHEDULERS, make_scheduler
from tests.inference.conftest import LoadTestModel
from tests.inference.families.checks import (
    assert_equals_plain_pipeline,
    assert_mixed_batch_equals_alone,
    neighbours_for,
)

SIZE = 64


@pytest.fixture(scope="module")
def sd3(load_test_model: LoadTestModel) -> LoadedModel:
    return load_test_model("tiny-sd3")


@pytest.mark.parametrize("scheduler", list(FLOW_SCHEDULERS))
def test_a_lane_in_a_mixed_batch_equals_the_same_lane_alone(sd3: LoadedModel, scheduler: str) -> None:
    subject = GenerateRequest("a red fox", steps=4, scheduler=scheduler, seed=1234, guidance=5.0,
                              width=SIZE, height=SIZE, negative_prompt="blurry")  # fmt: skip
    assert_mixed_batch_equals_alone(sd3, subject, neighbours_for(SIZE, scheduler, (1.0, 7.0)))


@pytest.mark.parametrize(("scheduler", "guidance"), [("Euler", 7.0), ("Heun", 4.0), ("DPM++ 2M", 5.0),
                                                     ("UniPC", 1.0)])  # fmt: skip
def test_a_lane_matches_the_plain_stable_diffusion_3_pipeline(
    sd3: LoadedModel, scheduler: str, guidance: float
) -> None:
    request = GenerateRequest("a red fox", steps=4, scheduler=scheduler, seed=77, guidance=guidance,
                              width=SIZE, height=2 * SIZE, negative_prompt="blurry")  # fmt: skip
    fresh = make_scheduler(sd3.pipe.scheduler.config, scheduler, 77, flow=True)
    assert_equals_plain_pipeline(sd3, request, fresh, negative_prompt="blurry")


def test_sd3_reports_its_family_and_defaults(sd3: LoadedModel) -> None:
    info = sd3.info
    assert (info.family, info.size_multiple, info.default_steps, info.default_guidance) == ("sd3", 16, 28, 7.0)
    assert info.schedulers == tuple(FLOW_SCHEDULERS) and info.guidance_mode == GUIDANCE_CFG

"""SD 1.x/2.x through its adapter (the engine tests in tests/inference/test_engine.py run on it):
what it reports, and guidance at or below 1 as diffusers runs it: one row, no CFG."""

from __future__ import annotations

import pytest
import torch

from inference.families import family_for
from inference.model_info import GUIDANCE_INPUT
from inference.models.loading import LoadedModel
from inference.registry import ModelSpec
from inference.requests import DEFAULT_COMPARE_STEPS, SCHEDULER_NAMES, GenerateRequest
from inference.schedulers import TCD_ETA, make_scheduler
from tests.inference.conftest import LoadTestModel
from tests.inference.families.checks import (
    assert_equals_plain_pipeline,
    assert_mixed_batch_equals_alone,
    neighbours_for,
)

SIZE = 64


@pytest.fixture(scope="module")
def tiny(load_test_model: LoadTestModel) -> LoadedModel:
    return load_test_model("tiny")


def test_sd_reports_every_scheduler_and_todays_defaults(tiny: LoadedModel) -> None:
    info = tiny.info
    # LCM's and TCD's consistency steps are for distilled models only: a full-step model isn't offered them.
    assert info.family == "sd" and info.schedulers == tuple(s for s in SCHEDULER_NAMES if s not in ("LCM", "TCD"))
    assert (info.default_steps, info.default_guidance, info.default_scheduler) == (30, 7.5, "Euler a")
    assert info.compare_steps == DEFAULT_COMPARE_STEPS and info.size_multiple == 8


@pytest.mark.parametrize("guidance", [0.0, 1.0])
def test_guidance_at_most_1_runs_one_row_as_the_plain_pipeline_does(tiny: LoadedModel, guidance: float) -> None:
    request = GenerateRequest(
        "a red fox", steps=4, scheduler="Euler", seed=5, guidance=guidance, width=SIZE, height=SIZE
    )
    assert_equals_plain_pipeline(tiny, request, make_scheduler(tiny.pipe.scheduler.config, "Euler", 5))
    assert_mixed_batch_equals_alone(tiny, request, neighbours_for(SIZE, "Euler a", (7.5, 3.0)))


@pytest.mark.parametrize("guidance", [0.0, 3.0])
def test_a_tcd_lane_equals_the_pipeline_with_tcd_at_the_docs_eta(tiny: LoadedModel, guidance: float) -> None:
    """TCD (a TCD-LoRA's scheduler) steps with eta 0.3 and the lane's own generator, as diffusers' TCD docs
    call the pipeline; alone and beside lanes of other schedulers and guidance."""
    request = GenerateRequest("a red fox", steps=4, scheduler="TCD", seed=5, guidance=guidance, width=SIZE, height=SIZE)
    tcd = make_scheduler(tiny.pipe.scheduler.config, "TCD", 5)
    assert_equals_plain_pipeline(tiny, request, tcd, eta=TCD_ETA)
    assert_mixed_batch_equals_alone(tiny, request, neighbours_for(SIZE, "Euler a", (7.5, 0.0)))


@pytest.fixture(scope="module")
def lcm_distilled(tiny: LoadedModel) -> LoadedModel:
    """The tiny SD pipeline with an LCM-distilled-style UNet: guidance goes in as `timestep_cond`."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(1)
    unet = UNet2DConditionModel(**{**tiny.pipe.unet.config, "time_cond_proj_dim": 16})
    pipe = type(tiny.pipe)(**{**tiny.pipe.components, "unet": unet})
    pipe.set_progress_bar_config(disable=True)
    spec = ModelSpec(name="lcm-dreamshaper", source="tiny")
    family = family_for(pipe, spec, tiny.device, tiny.dtype)
    return LoadedModel(pipe, spec.name, tiny.device, tiny.dtype, True, 0.0, family, family.info())


@pytest.mark.parametrize("guidance", [1.0, 8.0])
def test_an_lcm_distilled_unet_gets_its_guidance_embedding_as_the_plain_pipeline_gives_it(
    lcm_distilled: LoadedModel, guidance: float
) -> None:
    request = GenerateRequest("a red fox", steps=4, scheduler="LCM", seed=5, guidance=guidance, width=SIZE, height=SIZE)
    fresh = make_scheduler(lcm_distilled.pipe.scheduler.config, "LCM", 5)
    assert_equals_plain_pipeline(lcm_distilled, request, fresh)
    assert_mixed_batch_equals_alone(lcm_distilled, request, neighbours_for(SIZE, "LCM", (1.5, 3.0)))
    info = lcm_distilled.info
    assert (info.default_scheduler, info.default_guidance, info.guidance_mode) == ("LCM", 8.5, GUIDANCE_INPUT)


def test_a_latent_consistency_model_pipeline_folder_runs_as_sd(lcm_distilled: LoadedModel) -> None:
    # LCM_Dreamshaper_v7's model_index.json names LatentConsistencyModelPipeline: SD's components.
    from diffusers import LatentConsistencyModelPipeline

    components = {
        **lcm_distilled.pipe.components,
        "scheduler": make_scheduler(lcm_distilled.pipe.scheduler.config, "LCM", 0),
    }
    pipe = LatentConsistencyModelPipeline(**components, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    family = family_for(pipe, ModelSpec(name="dreamshaper", source="tiny"), lcm_distilled.device, lcm_distilled.dtype)
    model = LoadedModel(
        pipe, "dreamshaper", lcm_distilled.device, lcm_distilled.dtype, True, 0.0, family, family.info()
    )
    assert (family.name, model.info.default_steps, model.info.default_guidance) == ("sd", 4, 8.5)
    request = GenerateRequest("a red fox", steps=4, scheduler="LCM", seed=5, guidance=8.5, width=SIZE, height=SIZE)
    assert_equals_plain_pipeline(model, request, make_scheduler(pipe.scheduler.config, "LCM", 5))


@pytest.mark.parametrize("scheduler", ["Euler a", "DPM++ 2M Karras"])
def test_a_v_prediction_model_like_sd2_768_matches_its_plain_pipeline(tiny: LoadedModel, scheduler: str) -> None:
    # SD 2.x 768-v ships `prediction_type = "v_prediction"` in its scheduler config; every lane's
    # scheduler must inherit it, whichever one the member picks.
    v_config = {**tiny.pipe.scheduler.config, "prediction_type": "v_prediction"}
    pipe = type(tiny.pipe)(**{**tiny.pipe.components, "scheduler": type(tiny.pipe.scheduler).from_config(v_config)})
    pipe.set_progress_bar_config(disable=True)
    spec = ModelSpec(name="sd21-768", source="tiny")
    family = family_for(pipe, spec, tiny.device, tiny.dtype)
    v_model = LoadedModel(pipe, spec.name, tiny.device, tiny.dtype, True, 0.0, family, family.info())
    request = GenerateRequest("a red fox", steps=4, scheduler=scheduler, seed=3, guidance=7.5, width=SIZE, height=SIZE)
    fresh = make_scheduler(pipe.scheduler.config, scheduler, 3)
    assert fresh.config.prediction_type == "v_prediction"
    assert_equals_plain_pipeline(v_model, request, fresh)

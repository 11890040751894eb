"""What a model can do, from its pipeline's configs alone: family, sizes, defaults and the schedulers it can
honestly run. Pure tables: these build no model (tests/inference/families/ check the same on loaded ones)."""

from __future__ import annotations

import pytest

from inference.family_rules import (
    DEV_LADDER,
    FEW_STEP_LADDER,
    FLOW_SCHEDULER_NAMES,
    PipelineConfig,
    defaults,
    looks_few_step,
    model_info,
    offered_schedulers,
)
from inference.model_info import GUIDANCE_IGNORED, GUIDANCE_INPUT
from inference.registry import ModelSpec
from inference.requests import FEW_STEP_SCHEDULERS

VAE = {"block_out_channels": [128, 256, 512, 512]}  # a scale of 8
SD15 = PipelineConfig("StableDiffusionPipeline", "PNDMScheduler", {"sample_size": 64}, VAE)
SDXL_TURBO = PipelineConfig("StableDiffusionXLPipeline", "EulerAncestralDiscreteScheduler", {"sample_size": 64}, VAE)
LCM_UNET = PipelineConfig(
    "LatentConsistencyModelPipeline", "LCMScheduler", {"sample_size": 96, "time_cond_proj_dim": 256}, VAE
)
SCHNELL = PipelineConfig("FluxPipeline", "FlowMatchEulerDiscreteScheduler", {"guidance_embeds": False}, VAE)
DEV = PipelineConfig("FluxPipeline", "FlowMatchEulerDiscreteScheduler", {"guidance_embeds": True}, VAE)
SD3 = PipelineConfig(
    "StableDiffusion3Pipeline", "FlowMatchEulerDiscreteScheduler", {"sample_size": 128, "patch_size": 2}, VAE
)


def spec(name: str = "model", source: str = "someone/model", **fields: object) -> ModelSpec:
    return ModelSpec(name, source, **fields)  # type: ignore[arg-type]


def test_sizes_follow_the_vae_and_each_familys_packing() -> None:
    assert [model_info(config, spec()).size_multiple for config in (SD15, SCHNELL, SD3)] == [8, 16, 16]
    native = [model_info(config, spec()).native_size for config in (SD15, SDXL_TURBO, SCHNELL, SD3)]
    assert native == [512, 512, 1024, 1024]


def test_a_full_step_sd_model_gets_todays_defaults_and_no_consistency_scheduler() -> None:
    info = model_info(SD15, spec())
    assert (info.family, info.default_steps, info.default_guidance, info.default_scheduler) == (
        "sd",
        30,
        7.5,
        "Euler a",
    )
    assert not set(FEW_STEP_SCHEDULERS) & set(info.schedulers), "LCM and TCD blur a full-step model"


def test_flux_dev_takes_guidance_as_an_input_and_schnell_ignores_it() -> None:
    dev, schnell = defaults(DEV, spec()), defaults(SCHNELL, spec())
    assert (dev.steps, dev.guidance, dev.compare_steps, dev.guidance_mode) == (28, 3.5, DEV_LADDER, GUIDANCE_INPUT)
    assert (schnell.steps, schnell.guidance, schnell.guidance_mode) == (4, 0.0, GUIDANCE_IGNORED)
    assert offered_schedulers(DEV, spec()) == FLOW_SCHEDULER_NAMES


def test_an_lcm_distilled_unet_is_told_by_its_config_and_runs_lcm_with_embedded_guidance() -> None:
    info = model_info(LCM_UNET, spec("dreamshaper", "someone/dreamshaper"))
    assert (info.family, info.default_scheduler, info.default_steps, info.guidance_mode) == (
        "sd",
        "LCM",
        4,
        GUIDANCE_INPUT,
    )


def test_a_turbo_distill_runs_the_scheduler_it_ships_with_at_no_guidance_and_starts_img2img_higher() -> None:
    info = model_info(SDXL_TURBO, spec("sdxl-turbo", "stabilityai/sdxl-turbo"))
    assert (info.default_scheduler, info.default_guidance, info.compare_steps) == ("Euler a", 0.0, FEW_STEP_LADDER)
    assert info.default_strength == 0.75 and "LCM" in info.schedulers


@pytest.mark.parametrize(
    ("name", "few_step"),
    [
        ("sdxl-lightning", True),
        ("Hyper-SDXL", True),
        ("hypersd", True),
        ("HyperRealism", False),
        ("dreamshaper", False),
    ],
)
def test_few_step_distills_are_told_by_name_but_a_hyper_finetune_is_not_one(name: str, few_step: bool) -> None:
    assert looks_few_step(spec(name.lower(), f"someone/{name}")) is few_step


def test_the_registrys_word_on_few_steps_and_its_defaults_win() -> None:
    assert not looks_few_step(spec("turbo-realism", few_step=False))
    info = model_info(SD15, spec(steps=20, guidance=5.0, scheduler="DDIM", compare_steps=(10, 20)))
    chosen = (info.default_steps, info.default_guidance, info.default_scheduler, info.compare_steps)
    assert chosen == (20, 5.0, "DDIM", (10, 20))


def test_a_registry_scheduler_the_model_cant_run_is_refused_naming_the_ones_it_can() -> None:
    with pytest.raises(ValueError, match=r"^the registry's scheduler 'LCM' can't run on this sd model; choose one of"):
        model_info(SD15, spec(scheduler="LCM"))


def test_a_pipeline_stepgrid_doesnt_run_has_no_family() -> None:
    assert PipelineConfig("KandinskyPipeline", "DDPMScheduler").family is None

"""What a model can do, decided from its pipeline's configs alone (standard library only): its family, sizes,
defaults and the schedulers it can honestly run. The one table for both a loaded pipeline (`Family.info`) and a
model folder before any weight loads (`inference.models.files.info_before_loading`), so the CLI and the bot refuse
a model-specific option in the worker's own words without waiting minutes for the load."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from inference.model_info import GUIDANCE_CFG, GUIDANCE_IGNORED, GUIDANCE_INPUT, ModelInfo
from inference.registry import ModelSpec
from inference.requests import (
    DEFAULT_COMPARE_STEPS,
    DEFAULT_GUIDANCE,
    DEFAULT_HIRES_STRENGTH,
    DEFAULT_SCHEDULER,
    DEFAULT_STRENGTH,
    FEW_STEP_SCHEDULERS,
    SCHEDULER_NAMES,
)

# diffusers pipeline class name -> family (a module under inference.families)
FAMILY_MODULES: dict[str, str] = {
    "StableDiffusionPipeline": "sd",
    "LatentConsistencyModelPipeline": "sd",  # SD 1.5 LCM-distilled (LCM_Dreamshaper_v7): the same components
    "StableDiffusionXLPipeline": "sdxl",
    "FluxPipeline": "flux",
    "StableDiffusion3Pipeline": "sd3",
}
UNET_FAMILIES = ("sd", "sdxl")
# The flow-matching families' schedulers (inference.schedulers.FLOW_SCHEDULERS builds them).
FLOW_SCHEDULER_NAMES: tuple[str, ...] = ("Euler", "Heun", "DPM++ 2M", "UniPC")

# Hyper-SD by its own spelling ("Hyper-SD", "Hyper-SDXL", "hypersd"): "hyper" alone would also take
# the many "HyperRealism"-style full-step finetunes for distills.
FEW_STEP_HINTS = re.compile(r"turbo|lightning|lcm|hyper[-_ ]?sd")
FEW_STEP_LADDER = (1, 2, 3, 4, 6, 8)
LCM_EMBEDDED_GUIDANCE = 8.5
SDXL_GUIDANCE = 5.0  # diffusers' default for SDXL
DEV_LADDER = (4, 8, 12, 20, 28, 40)
SD3_LADDER = (4, 8, 12, 20, 28, 40)
FLUX_DEFAULT_SAMPLE_SIZE = 128  # FluxPipeline's `default_sample_size` (latent side of its native size)
# A pipeline's own scheduler class -> its A1111 name, where that name means the same scheduler.
SHIPPED_SCHEDULERS = {
    "EulerDiscreteScheduler": "Euler",
    "EulerAncestralDiscreteScheduler": "Euler a",
    "DDIMScheduler": "DDIM",
    "LCMScheduler": "LCM",
    "TCDScheduler": "TCD",
}


@dataclass(frozen=True)
class Defaults:
    steps: int
    guidance: float
    scheduler: str
    compare_steps: tuple[int, ...]
    guidance_mode: str = GUIDANCE_CFG


@dataclass(frozen=True)
class PipelineConfig:
    """The configs that decide what a model can do: read from a loaded pipeline, or from a folder's JSON files."""

    pipeline: str  # the diffusers pipeline class (model_index.json's `_class_name`)
    scheduler: str  # its scheduler's class name
    denoiser: Mapping[str, Any] = field(default_factory=dict)  # the UNet's or the transformer's config
    vae: Mapping[str, Any] = field(default_factory=dict)
    default_sample_size: int = FLUX_DEFAULT_SAMPLE_SIZE  # FLUX: the pipeline's own, not in a config file

    @property
    def family(self) -> str | None:
        """The family that runs this pipeline ("sd", "sdxl", "flux", "sd3"), or None for one Stepgrid doesn't run."""
        return FAMILY_MODULES.get(self.pipeline)


def looks_lcm(spec: ModelSpec) -> bool:
    return spec.few_step is not False and "lcm" in f"{spec.name} {spec.source}".lower()


def looks_few_step(spec: ModelSpec) -> bool:
    """Distilled few-step models (Turbo, Lightning, LCM, Hyper): the registry's `few_step` where the
    operator set it, else by the model's registry name or source."""
    if spec.few_step is not None:
        return spec.few_step
    text = f"{spec.name} {spec.source}".lower()
    return FEW_STEP_HINTS.search(text) is not None


def embeds_guidance(config: PipelineConfig) -> bool:
    """The denoiser takes guidance as an input: FLUX.1-dev's guidance embedding, an LCM-distilled UNet's."""
    if config.family == "flux":
        return bool(config.denoiser.get("guidance_embeds"))
    return config.family in UNET_FAMILIES and config.denoiser.get("time_cond_proj_dim") is not None


def is_lcm(config: PipelineConfig, spec: ModelSpec) -> bool:
    """A UNet model LCM-distilled (the UNet takes a guidance embedding) or LCM-LoRA merged (told by its name)."""
    return embeds_guidance(config) or looks_lcm(spec)


def is_few_step(config: PipelineConfig, spec: ModelSpec) -> bool:
    """A UNet model distilled for few steps (Turbo, Lightning, LCM, Hyper): they can't be told from their config."""
    return is_lcm(config, spec) or looks_few_step(spec)


def vae_scale(config: PipelineConfig) -> int:
    return int(2 ** (len(config.vae["block_out_channels"]) - 1))


def size_multiple(config: PipelineConfig) -> int:
    """Width and height must be multiples of this: the VAE's scale, times FLUX's 2x2 packing or SD 3's patch."""
    if config.family == "flux":
        return vae_scale(config) * 2
    if config.family == "sd3":
        return vae_scale(config) * int(config.denoiser["patch_size"])
    return vae_scale(config)


def native_size(config: PipelineConfig) -> int:
    sample_size = config.default_sample_size if config.family == "flux" else int(config.denoiser["sample_size"])
    return int(sample_size) * vae_scale(config)


def defaults(config: PipelineConfig, spec: ModelSpec) -> Defaults:
    """The family's defaults for this model, before the registry's own."""
    family = config.family
    if family == "flux":
        if embeds_guidance(config):
            return Defaults(28, 3.5, "Euler", DEV_LADDER, guidance_mode=GUIDANCE_INPUT)
        return Defaults(4, 0.0, "Euler", FEW_STEP_LADDER, guidance_mode=GUIDANCE_IGNORED)
    if family == "sd3":
        if looks_few_step(spec):
            return Defaults(4, 0.0, "Euler", FEW_STEP_LADDER)
        return Defaults(28, 7.0, "Euler", SD3_LADDER)
    if embeds_guidance(config):
        # LCM-distilled with the guidance as an input (LCM_Dreamshaper_v7): LatentConsistencyModelPipeline's
        # default; its guidance embedding was trained on w = guidance - 1 well above 0.
        return Defaults(4, LCM_EMBEDDED_GUIDANCE, "LCM", FEW_STEP_LADDER, guidance_mode=GUIDANCE_INPUT)
    if is_lcm(config, spec):  # LCM-LoRA merged: plain CFG, which the LCM cards keep at 1-2
        return Defaults(4, 1.0, "LCM", FEW_STEP_LADDER)
    if looks_few_step(spec):
        # Turbo/Lightning/Hyper: guidance 0 means one row per lane (no CFG), 1-4 steps, and the scheduler
        # the distill ships with, which its card runs (Euler a for SDXL Turbo, Euler for Lightning).
        return Defaults(4, 0.0, SHIPPED_SCHEDULERS.get(config.scheduler, DEFAULT_SCHEDULER), FEW_STEP_LADDER)
    return Defaults(
        30, SDXL_GUIDANCE if family == "sdxl" else DEFAULT_GUIDANCE, DEFAULT_SCHEDULER, DEFAULT_COMPARE_STEPS
    )


def offered_schedulers(config: PipelineConfig, spec: ModelSpec) -> tuple[str, ...]:
    """The schedulers this model can honestly run: flow-matching ones for FLUX and SD 3; for a UNet, LCM's and
    TCD's consistency steps only on a distilled model (on a full-step one they give a blur)."""
    if config.family not in UNET_FAMILIES:
        return FLOW_SCHEDULER_NAMES
    if is_few_step(config, spec):
        return SCHEDULER_NAMES
    return tuple(s for s in SCHEDULER_NAMES if s not in FEW_STEP_SCHEDULERS)


def model_info(config: PipelineConfig, spec: ModelSpec) -> ModelInfo:
    """Defaults overlaid with the registry entry's; raises ValueError for a scheduler it can't run."""
    base = defaults(config, spec)
    scheduler = spec.scheduler or base.scheduler
    schedulers = offered_schedulers(config, spec)
    if scheduler not in schedulers:
        raise ValueError(
            f"the registry's scheduler {scheduler!r} can't run on this {config.family} model; "
            f"choose one of: {', '.join(schedulers)}"
        )
    return ModelInfo(
        name=spec.name,
        family=config.family or config.pipeline,
        schedulers=schedulers,
        default_scheduler=scheduler,
        default_steps=spec.steps or base.steps,
        default_guidance=base.guidance if spec.guidance is None else spec.guidance,
        compare_steps=spec.compare_steps or base.compare_steps,
        native_size=native_size(config),
        size_multiple=size_multiple(config),
        max_steps=spec.max_steps,
        guidance_mode=base.guidance_mode,
        is_test_model=spec.is_test_model,
        # A few-step distill at 0.6 of 4 steps runs 2: start it higher so the image changes.
        default_strength=0.75 if base.steps <= 8 else DEFAULT_STRENGTH,
        hires_strength=0.6 if base.steps <= 8 else DEFAULT_HIRES_STRENGTH,
    )

"""Model families: one small adapter per pipeline kind, so the lane engine stays family-agnostic.

An adapter answers what differs between families: prompt encoding, the denoiser call on a batch of
lanes with per-sample timesteps (with or without classifier-free guidance rows), latent shape and
packing, the timestep schedule, VAE decoding; its defaults, sizes and schedulers are decided from the
pipeline's configs by `inference.family_rules` (which the bot also reads before a model loads). A new
family is one file with a `Family` subclass, named in `family_rules.FAMILY_MODULES`, and its rules there.
"""

from __future__ import annotations

import abc
import importlib
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from inference import family_rules
from inference.family_rules import FAMILY_MODULES, FLOW_SCHEDULER_NAMES, Defaults, PipelineConfig
from inference.model_info import ModelInfo
from inference.registry import ModelSpec
from inference.requests import img2img_steps
from inference.schedulers import FLOW_SCHEDULERS, Scheduler

Pipeline = Any  # a diffusers pipeline: its components are attached dynamically

assert tuple(FLOW_SCHEDULERS) == FLOW_SCHEDULER_NAMES, "family_rules and schedulers must agree"


@dataclass
class Conditioning:
    """Text conditioning of one job: one row per tensor, plus the unconditional rows when the job
    uses classifier-free guidance (None: the lane runs as one row)."""

    cond: dict[str, torch.Tensor]
    uncond: dict[str, torch.Tensor] | None
    guidance: torch.Tensor  # shape (1,), float32 on the device, so a batch needs no host copy
    shared: dict[str, torch.Tensor] = field(default_factory=dict)  # equal for every lane of a batch
    truncated: bool = False


@dataclass
class DenoiserBatch:
    """The lanes of one denoiser call: each lane's model input, timestep and conditioning, in lane
    order, and the batch to pad up to (`rows` >= the lane count: a compiled denoiser's bucket)."""

    inputs: list[torch.Tensor]
    timesteps: list[torch.Tensor]
    conditionings: list[Conditioning]
    rows: int

    @property
    def guided(self) -> list[int]:
        """The lanes that run classifier-free guidance (an unconditional row each)."""
        return [i for i, c in enumerate(self.conditionings) if c.uncond is not None]


@dataclass
class EncodedImage:
    """An input image through the VAE's encoder: its latent distribution's mean and std (batch of 1).
    Each lane samples its own latents from it with its own generator, as diffusers' `retrieve_latents`."""

    mean: torch.Tensor
    std: torch.Tensor


class Family(abc.ABC):
    """The adapter of one loaded pipeline."""

    name: ClassVar[str]
    schedulers: ClassVar[tuple[str, ...]]
    compilable: ClassVar[bool] = False  # whether `predict` pads batches to a compiled denoiser's buckets
    flow: ClassVar[bool] = False  # flow matching: img2img noises with `scale_noise` and counts steps as SD 3

    def __init__(self, pipe: Pipeline, spec: ModelSpec, device: torch.device, dtype: torch.dtype) -> None:
        self.pipe = pipe
        self.spec = spec
        self.device = device
        self.dtype = dtype

    # -- what the model is --------------------------------------------------------------------

    @property
    @abc.abstractmethod
    def denoiser(self) -> torch.nn.Module:
        """The UNet or transformer called once per engine iteration."""

    def pipeline_config(self) -> PipelineConfig:
        """The configs that decide what this model can do (`inference.family_rules` reads them)."""
        pipe = self.pipe
        return PipelineConfig(
            pipeline=type(pipe).__name__,
            scheduler=type(pipe.scheduler).__name__,
            denoiser=(pipe.transformer if self.flow else pipe.unet).config,
            vae=pipe.vae.config,
            default_sample_size=int(getattr(pipe, "default_sample_size", family_rules.FLUX_DEFAULT_SAMPLE_SIZE)),
        )

    @property
    def vae_scale(self) -> int:
        return family_rules.vae_scale(self.pipeline_config())

    @property
    def size_multiple(self) -> int:
        return family_rules.size_multiple(self.pipeline_config())

    @property
    def native_size(self) -> int:
        return family_rules.native_size(self.pipeline_config())

    def defaults(self) -> Defaults:
        """The family's defaults for this model, before the registry's own."""
        return family_rules.defaults(self.pipeline_config(), self.spec)

    def info(self) -> ModelInfo:
        """Defaults overlaid with the registry entry's; raises ValueError for a scheduler it can't run."""
        return family_rules.model_info(self.pipeline_config(), self.spec)

    def offered_schedulers(self) -> tuple[str, ...]:
        """The schedulers this model can honestly run (its family's table, unless narrowed)."""
        return family_rules.offered_schedulers(self.pipeline_config(), self.spec)

    def uses_cfg_at(self, guidance: float) -> bool:
        """Whether this guidance value runs classifier-free guidance (diffusers: only above 1)."""
        return guidance > 1

    # -- one job and its lanes ------------------------------------------------------------------

    @abc.abstractmethod
    def encode(self, prompt: str, negative_prompt: str, guidance: float, height: int, width: int) -> Conditioning:
        """Encode the prompt (and the negative one where the family uses it)."""

    @abc.abstractmethod
    def new_scheduler(
        self, name: str, steps: int, seed: int, height: int, width: int, *, few_step: bool = False
    ) -> Scheduler:
        """A fresh scheduler for one lane, its timesteps set for `steps` at this size (`few_step`: a
        step-distillation LoRA is active, so space the steps as a few-step model's)."""

    @abc.abstractmethod
    def initial_latents(
        self, scheduler: Scheduler, height: int, width: int, generator: torch.Generator
    ) -> torch.Tensor:
        """One lane's starting noise, in the layout the denoiser takes (batch of 1)."""

    def model_input(self, scheduler: Scheduler, latents: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return latents

    @abc.abstractmethod
    def predict(self, denoiser: Any, batch: DenoiserBatch) -> torch.Tensor:
        """One denoiser call over a batch of lanes; returns each lane's (guided) prediction."""

    @abc.abstractmethod
    def decode(self, latents: torch.Tensor, height: int, width: int) -> np.ndarray:
        """VAE-decode a batch of one size to uint8 HxWx3 arrays."""

    def preview_latents(self, latents: torch.Tensor, height: int, width: int) -> np.ndarray:
        """(channels, h, w) latents of one lane for the cheap progress preview."""
        return latents[0].float().cpu().numpy()

    def supports_padding(self, conditionings: list[Conditioning]) -> bool:
        """Whether `predict` can pad this batch to a compiled bucket."""
        return False

    # -- img2img: a lane that starts part-way down its schedule from an encoded image ------------

    def img2img_start(self, scheduler: Scheduler, steps: int, strength: float) -> int:
        """The index into the scheduler's timesteps where an img2img lane starts, and set the
        scheduler's begin index there: the family's img2img pipeline's `get_timesteps`."""
        start = (steps - img2img_steps(steps, strength, flow=self.flow)) * scheduler.order
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(start)
        return int(start)

    def image_pixels(self, image: Image.Image, height: int, width: int) -> torch.Tensor:
        """An RGB input image as the VAE takes it, preprocessed as the img2img pipelines do (resized to
        the size with Lanczos where it differs, scaled to [-1, 1]): float32 (1, 3, height, width)."""
        pixels: torch.Tensor = self.pipe.image_processor.preprocess(image, height=height, width=width)
        return pixels.to(torch.float32)

    def encode_images(self, pixels: torch.Tensor) -> list[EncodedImage]:
        """VAE-encode a batch of input images of one size in one call; one EncodedImage each."""
        vae = self.pipe.vae
        dist = vae.encode(pixels.to(self.device, vae.dtype)).latent_dist
        return [EncodedImage(dist.mean[i : i + 1], dist.std[i : i + 1]) for i in range(len(pixels))]

    def image_latents(self, encoded: EncodedImage, generator: torch.Generator) -> torch.Tensor:
        """One lane's sample of the image's latents, scaled as the denoiser's latents are."""
        mean = encoded.mean
        sample = mean + encoded.std * randn_tensor(
            mean.shape, generator=generator, device=mean.device, dtype=mean.dtype
        )
        return self.scale_image_latents(sample.to(self.dtype))

    def scale_image_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """The VAE's raw latents in the denoiser's scale (the inverse of what `decode` undoes)."""
        vae = self.pipe.vae
        return (latents - vae.config.shift_factor) * vae.config.scaling_factor

    def noised_image_latents(
        self, scheduler: Scheduler, latents: torch.Tensor, t: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        """A lane's first latents: the image's, noised to its first timestep `t` (unpacked layout)."""
        noise = randn_tensor(latents.shape, generator=generator, device=self.device, dtype=self.dtype)
        timestep = t.reshape(1)
        if self.flow and hasattr(scheduler, "scale_noise"):
            noised: torch.Tensor = scheduler.scale_noise(latents, timestep, noise)
        else:  # DPM++ 2M and UniPC with flow sigmas noise the same way through add_noise
            noised = scheduler.add_noise(latents, noise, timestep)
        return noised.to(self.dtype)

    def pack_latents(self, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Latents in the denoiser's layout (FLUX packs 2x2 patches)."""
        return latents


class TransformerFamily(Family):
    """A flow-matching family whose denoiser is a transformer (FLUX, SD 3)."""

    schedulers: ClassVar[tuple[str, ...]] = tuple(FLOW_SCHEDULERS)
    flow: ClassVar[bool] = True

    @property
    def denoiser(self) -> torch.nn.Module:
        transformer: torch.nn.Module = self.pipe.transformer
        return transformer

    def decode_latents(self, latents: torch.Tensor) -> np.ndarray:
        """VAE-decode unpacked latents: undo the VAE's scaling and shift first."""
        vae = self.pipe.vae
        latents = latents / vae.config.scaling_factor + vae.config.shift_factor
        return to_uint8(vae.decode(latents.to(vae.dtype), return_dict=False)[0])


def guided_rows(
    prediction: torch.Tensor, guided: list[int], n: int, pad: int, conditionings: list[Conditioning]
) -> torch.Tensor:
    """Combine a CFG batch laid out as [uncond rows of the guided lanes (+pad), cond rows of all
    lanes (+pad)] into one prediction per lane: uncond + guidance * (cond - uncond)."""
    first_cond = len(guided) + (pad if guided else 0)
    cond = prediction[first_cond : first_cond + n]
    if not guided:
        return cond
    uncond = prediction[: len(guided)]
    shape = (-1,) + (1,) * (prediction.dim() - 1)
    scale = torch.cat([conditionings[i].guidance for i in guided]).to(prediction.dtype).view(shape)
    if len(guided) == n:
        result: torch.Tensor = uncond + scale * (cond - uncond)
        return result
    mixed = cond.clone()
    mixed[guided] = uncond + scale * (cond[guided] - uncond)
    return mixed


def to_uint8(decoded: torch.Tensor) -> np.ndarray:
    """VAE output in [-1, 1] to uint8 HxWx3 arrays, as diffusers' image processor rounds them."""
    pixels = ((decoded / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()


def family_for(pipe: Pipeline, spec: ModelSpec, device: torch.device, dtype: torch.dtype) -> Family:
    """The adapter for a loaded pipeline; raises LookupError for a pipeline Stepgrid doesn't run."""
    module_name = FAMILY_MODULES.get(type(pipe).__name__)
    if module_name is None:
        raise LookupError(type(pipe).__name__)
    module = importlib.import_module(f"inference.families.{module_name}")
    family: Family = module.FAMILY(pipe, spec, device, dtype)
    return family


def supported_pipelines() -> str:
    return ", ".join(FAMILY_MODULES)

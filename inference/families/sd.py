"""Stable Diffusion 1.x/2.x: one CLIP encoder, a UNet, classifier-free guidance rows."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor

from inference import family_rules
from inference.families import Conditioning, DenoiserBatch, EncodedImage, Family, guided_rows, to_uint8
from inference.requests import SCHEDULER_NAMES
from inference.schedulers import Scheduler, make_scheduler


class UNetFamily(Family):
    """What SD and SDXL share: discrete noise schedulers, a UNet, and CFG as two rows per lane."""

    schedulers: ClassVar[tuple[str, ...]] = SCHEDULER_NAMES
    compilable: ClassVar[bool] = True

    @property
    def denoiser(self) -> torch.nn.Module:
        unet: torch.nn.Module = self.pipe.unet
        return unet

    def uses_cfg_at(self, guidance: float) -> bool:
        return guidance > 1 and self.pipe.unet.config.time_cond_proj_dim is None

    def is_lcm(self) -> bool:
        """LCM-distilled (the UNet takes a guidance embedding) or LCM-LoRA merged (told by its name)."""
        return family_rules.is_lcm(self.pipeline_config(), self.spec)

    def looks_few_step(self) -> bool:
        """Distilled few-step models (Turbo, Lightning, LCM, Hyper) can't be told from their config."""
        return family_rules.is_few_step(self.pipeline_config(), self.spec)

    def guidance_embedding(self, guidance: float) -> dict[str, torch.Tensor]:
        """LCM-distilled UNets take the guidance as an embedding (`timestep_cond`) instead of CFG rows."""
        dim = self.pipe.unet.config.time_cond_proj_dim
        if dim is None:
            return {}
        embedding = self.pipe.get_guidance_scale_embedding(torch.tensor(guidance - 1).repeat(1), embedding_dim=dim)
        return {"timestep_cond": embedding.to(device=self.device, dtype=self.dtype)}

    def _truncated(self, prompt: str) -> bool:
        tokenizer = self.pipe.tokenizer
        return len(tokenizer(prompt, truncation=False).input_ids) > tokenizer.model_max_length

    def new_scheduler(
        self, name: str, steps: int, seed: int, height: int, width: int, *, few_step: bool = False
    ) -> Scheduler:
        # Few-step distills (and step-distillation LoRAs) start at the last training timestep, as their
        # cards ask ("trailing"); the "leading" spacing of SD/SDXL base configs would start a 1-step run
        # at t=1, on pure noise.
        trailing = few_step or self.looks_few_step()
        extra: dict[str, Any] = {"timestep_spacing": "trailing"} if trailing else {}
        scheduler = make_scheduler(self.pipe.scheduler.config, name, seed, **extra)
        scheduler.set_timesteps(steps, device=self.device)
        return scheduler

    def initial_latents(
        self, scheduler: Scheduler, height: int, width: int, generator: torch.Generator
    ) -> torch.Tensor:
        scale = self.vae_scale
        shape = (1, self.pipe.unet.config.in_channels, height // scale, width // scale)
        latents = randn_tensor(shape, generator=generator, device=self.device, dtype=self.dtype)
        return latents * scheduler.init_noise_sigma

    def model_input(self, scheduler: Scheduler, latents: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        scaled: torch.Tensor = scheduler.scale_model_input(latents, t)
        return scaled

    def supports_padding(self, conditionings: list[Conditioning]) -> bool:
        return all(c.uncond is not None for c in conditionings)

    def predict(self, denoiser: Any, batch: DenoiserBatch) -> torch.Tensor:
        """Unconditional rows of the guided lanes first, then every lane's conditional row."""
        inputs, timesteps, conditionings, guided = batch.inputs, batch.timesteps, batch.conditionings, batch.guided
        n, rows = len(inputs), batch.rows
        all_guided = len(guided) == n
        pad = rows - n
        assert pad == 0 or all_guided, "only batches where every lane uses CFG are padded"

        # Row order of the call: the guided lanes' uncond rows, then every lane's cond row; padding
        # repeats the last lane of each block so a compiled UNet only ever sees its bucket shapes.
        uncond_order = [*range(len(guided)), *[len(guided) - 1] * pad] if guided else []
        cond_order = [*range(n), *[n - 1] * pad]
        order = [guided[k] for k in uncond_order] + cond_order  # lane of each row

        def call_rows(uncond_rows: list[torch.Tensor], cond_rows: list[torch.Tensor]) -> torch.Tensor:
            return torch.cat([uncond_rows[k] for k in uncond_order] + [cond_rows[i] for i in cond_order])

        uncond = [c.uncond for c in conditionings if c.uncond is not None]
        inputs_of = {
            key: call_rows([u[key] for u in uncond], [c.cond[key] for c in conditionings])
            for key in conditionings[0].cond
        }
        embeds = inputs_of.pop("embeds")
        timestep_cond = inputs_of.pop("timestep_cond", None)
        noise = denoiser(
            torch.cat([inputs[i] for i in order]),
            torch.stack([timesteps[i] for i in order]).to(torch.float32),  # no index tensor: no host copy
            encoder_hidden_states=embeds,
            timestep_cond=timestep_cond,
            added_cond_kwargs=inputs_of or None,
            return_dict=False,
        )[0]
        return guided_rows(noise, guided, n, pad, conditionings)

    def _upcasts_vae(self) -> bool:
        vae = self.pipe.vae
        return vae.dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False))

    def encode_images(self, pixels: torch.Tensor) -> list[EncodedImage]:
        vae = self.pipe.vae
        upcast = self._upcasts_vae()
        if upcast:  # SDXL's VAE overflows in float16, as StableDiffusionXLImg2ImgPipeline knows
            vae.to(torch.float32)
        try:
            dist = vae.encode(pixels.to(self.device, torch.float32 if upcast else vae.dtype)).latent_dist
        finally:
            if upcast:
                vae.to(torch.float16)
        return [EncodedImage(dist.mean[i : i + 1], dist.std[i : i + 1]) for i in range(len(pixels))]

    def scale_image_latents(self, latents: torch.Tensor) -> torch.Tensor:
        config = self.pipe.vae.config
        mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
        if mean is not None and std is not None:  # as StableDiffusionXLImg2ImgPipeline.prepare_latents
            channels = latents.shape[1]
            mean_t = torch.tensor(mean).view(1, channels, 1, 1).to(latents.device, latents.dtype)
            std_t = torch.tensor(std).view(1, channels, 1, 1).to(latents.device, latents.dtype)
            return (latents - mean_t) * config.scaling_factor / std_t
        scaled: torch.Tensor = config.scaling_factor * latents
        return scaled

    def decode(self, latents: torch.Tensor, height: int, width: int) -> np.ndarray:
        vae = self.pipe.vae
        config = vae.config
        upcast = vae.dtype == torch.float16 and getattr(config, "force_upcast", False)
        if upcast:  # SDXL's VAE overflows in float16, as diffusers' pipelines know
            vae.to(torch.float32)
        try:
            latents = latents.to(next(iter(vae.post_quant_conv.parameters())).dtype if upcast else vae.dtype)
            mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
            if mean is not None and std is not None:
                channels = latents.shape[1]
                mean_t = torch.tensor(mean).view(1, channels, 1, 1).to(latents.device, latents.dtype)
                std_t = torch.tensor(std).view(1, channels, 1, 1).to(latents.device, latents.dtype)
                latents = latents * std_t / config.scaling_factor + mean_t
            else:
                latents = latents / config.scaling_factor
            decoded = vae.decode(latents, return_dict=False)[0]
        finally:
            if upcast:
                vae.to(torch.float16)
        return to_uint8(decoded)


class StableDiffusion(UNetFamily):
    name: ClassVar[str] = "sd"

    @torch.no_grad()
    def encode(self, prompt: str, negative_prompt: str, guidance: float, height: int, width: int) -> Conditioning:
        cfg = self.uses_cfg_at(guidance)
        cond, uncond = self.pipe.encode_prompt(
            prompt,
            device=self.device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=cfg,
            negative_prompt=negative_prompt or None,
        )
        return Conditioning(
            cond={"embeds": cond, **self.guidance_embedding(guidance)},
            uncond={"embeds": uncond} if cfg else None,
            guidance=torch.full((1,), guidance, device=self.device, dtype=torch.float32),
            truncated=self._truncated(prompt),
        )


FAMILY = StableDiffusion

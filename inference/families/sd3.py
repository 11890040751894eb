"""Stable Diffusion 3.x: an MMDiT over unpacked 16-channel latents, three text encoders (two CLIP
for pooled + sequence, T5 for the sequence), classifier-free guidance as two rows per lane, and
flow-matching schedulers with the config's shift (or the dynamic one, as StableDiffusion3Pipeline)."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift
from diffusers.utils.torch_utils import randn_tensor

from inference.families import Conditioning, DenoiserBatch, TransformerFamily, guided_rows
from inference.schedulers import Scheduler, make_flow_scheduler

MAX_SEQUENCE_LENGTH = 256  # StableDiffusion3Pipeline's default


class StableDiffusion3(TransformerFamily):
    name: ClassVar[str] = "sd3"

    @property
    def patch_size(self) -> int:
        return int(self.pipe.transformer.config.patch_size)

    @torch.no_grad()
    def encode(self, prompt: str, negative_prompt: str, guidance: float, height: int, width: int) -> Conditioning:
        cfg = self.uses_cfg_at(guidance)
        embeds, negative, pooled, negative_pooled = self.pipe.encode_prompt(
            prompt=prompt,
            prompt_2=None,
            prompt_3=None,
            device=self.device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=cfg,
            negative_prompt=negative_prompt or None,
            max_sequence_length=MAX_SEQUENCE_LENGTH,
        )
        tokenizer = self.pipe.tokenizer
        truncated = len(tokenizer(prompt, truncation=False).input_ids) > tokenizer.model_max_length
        return Conditioning(
            cond={"embeds": embeds, "pooled": pooled},
            uncond={"embeds": negative, "pooled": negative_pooled} if cfg else None,
            guidance=torch.full((1,), guidance, device=self.device, dtype=torch.float32),
            truncated=truncated,
        )

    def mu(self, height: int, width: int) -> float:
        config = self.pipe.scheduler.config
        tokens = (height // self.vae_scale // self.patch_size) * (width // self.vae_scale // self.patch_size)
        return float(
            calculate_shift(
                tokens,
                config.get("base_image_seq_len", 256),
                config.get("max_image_seq_len", 4096),
                config.get("base_shift", 0.5),
                config.get("max_shift", 1.16),
            )
        )

    def new_scheduler(
        self, name: str, steps: int, seed: int, height: int, width: int, *, few_step: bool = False
    ) -> Scheduler:
        return make_flow_scheduler(
            self.pipe.scheduler.config, name, seed, steps, self.device, mu=self.mu(height, width)
        )

    def initial_latents(
        self, scheduler: Scheduler, height: int, width: int, generator: torch.Generator
    ) -> torch.Tensor:
        shape = (1, self.pipe.transformer.config.in_channels, height // self.vae_scale, width // self.vae_scale)
        return randn_tensor(shape, generator=generator, device=self.device, dtype=self.dtype)

    def predict(self, denoiser: Any, batch: DenoiserBatch) -> torch.Tensor:
        """Unconditional rows of the guided lanes first, then every lane's conditional row."""
        inputs, conditionings, guided = batch.inputs, batch.conditionings, batch.guided
        uncond = [c.uncond for c in conditionings if c.uncond is not None]

        def rows_of(key: str) -> torch.Tensor:
            return torch.cat([u[key] for u in uncond] + [c.cond[key] for c in conditionings])

        t_rows = [t.expand(1) for t in batch.timesteps]
        prediction = denoiser(
            hidden_states=torch.cat([inputs[i] for i in guided] + inputs),
            timestep=torch.cat([t_rows[i] for i in guided] + t_rows),
            encoder_hidden_states=rows_of("embeds"),
            pooled_projections=rows_of("pooled"),
            return_dict=False,
        )[0]
        return guided_rows(prediction, guided, len(inputs), 0, conditionings)

    def decode(self, latents: torch.Tensor, height: int, width: int) -> np.ndarray:
        return self.decode_latents(latents)


FAMILY = StableDiffusion3

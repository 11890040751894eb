"""FLUX.1 (dev and schnell): a flow-matching transformer over 2x2-packed latents, CLIP pooled and
T5 sequence embeddings, guidance as an input (dev) or none (schnell), and a timestep shift that
depends on the image's token count, computed exactly as `FluxPipeline` does.

No classifier-free guidance rows: each lane is one row. The negative prompt is not used (FLUX's
"true CFG" would double the batch and is not what FLUX-dev was distilled for).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from diffusers.pipelines.flux.pipeline_flux import calculate_shift
from diffusers.utils.torch_utils import randn_tensor

from inference import family_rules
from inference.families import Conditioning, DenoiserBatch, TransformerFamily
from inference.schedulers import Scheduler, make_flow_scheduler


class Flux(TransformerFamily):
    name: ClassVar[str] = "flux"

    @property
    def guidance_distilled(self) -> bool:
        """FLUX-dev takes guidance as an input; schnell (no guidance embedding) ignores it."""
        return family_rules.embeds_guidance(self.pipeline_config())

    @property
    def max_sequence_length(self) -> int:
        return 512 if self.guidance_distilled else 256  # schnell was trained with 256 T5 tokens

    @torch.no_grad()
    def encode(self, prompt: str, negative_prompt: str, guidance: float, height: int, width: int) -> Conditioning:
        pipe = self.pipe
        embeds, pooled, text_ids = pipe.encode_prompt(
            prompt=prompt,
            prompt_2=None,
            device=self.device,
            num_images_per_prompt=1,
            max_sequence_length=self.max_sequence_length,
        )
        latent_h, latent_w = self._latent_size(height, width)
        image_ids = pipe._prepare_latent_image_ids(1, latent_h // 2, latent_w // 2, self.device, embeds.dtype)
        tokens = len(pipe.tokenizer_2(prompt, truncation=False).input_ids)
        return Conditioning(
            cond={"embeds": embeds, "pooled": pooled},
            uncond=None,
            guidance=torch.full((1,), guidance, device=self.device, dtype=torch.float32),
            shared={"txt_ids": text_ids, "img_ids": image_ids},
            truncated=tokens > self.max_sequence_length,
        )

    def _latent_size(self, height: int, width: int) -> tuple[int, int]:
        return 2 * (height // (self.vae_scale * 2)), 2 * (width // (self.vae_scale * 2))

    def mu(self, height: int, width: int) -> float:
        """The resolution-dependent shift: FluxPipeline's calculate_shift over the packed token count."""
        latent_h, latent_w = self._latent_size(height, width)
        config = self.pipe.scheduler.config
        return float(
            calculate_shift(
                (latent_h // 2) * (latent_w // 2),
                config.get("base_image_seq_len", 256),
                config.get("max_image_seq_len", 4096),
                config.get("base_shift", 0.5),
                config.get("max_shift", 1.15),
            )
        )

    def new_scheduler(
        self, name: str, steps: int, seed: int, height: int, width: int, *, few_step: bool = False
    ) -> Scheduler:
        # Flow-matching sigmas already start at pure noise: a few-step LoRA changes nothing here.
        sigmas = np.linspace(1.0, 1 / steps, steps) if name == "Euler" else None  # as FluxPipeline
        return make_flow_scheduler(
            self.pipe.scheduler.config, name, seed, steps, self.device, mu=self.mu(height, width), sigmas=sigmas
        )

    def initial_latents(
        self, scheduler: Scheduler, height: int, width: int, generator: torch.Generator
    ) -> torch.Tensor:
        channels = self.pipe.transformer.config.in_channels // 4
        latent_h, latent_w = self._latent_size(height, width)
        noise = randn_tensor(
            (1, channels, latent_h, latent_w), generator=generator, device=self.device, dtype=self.dtype
        )
        packed: torch.Tensor = self.pipe._pack_latents(noise, 1, channels, latent_h, latent_w)
        return packed

    def pack_latents(self, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
        _, channels, latent_h, latent_w = latents.shape
        packed: torch.Tensor = self.pipe._pack_latents(latents, 1, channels, latent_h, latent_w)
        return packed

    def predict(self, denoiser: Any, batch: DenoiserBatch) -> torch.Tensor:
        conditionings = batch.conditionings
        latents = torch.cat(batch.inputs)
        t = torch.cat([t.expand(1).to(latents.dtype) for t in batch.timesteps])
        guidance = torch.cat([c.guidance for c in conditionings]) if self.guidance_distilled else None
        first = conditionings[0]
        prediction: torch.Tensor = denoiser(
            hidden_states=latents,
            timestep=t / 1000,
            guidance=guidance,
            pooled_projections=torch.cat([c.cond["pooled"] for c in conditionings]),
            encoder_hidden_states=torch.cat([c.cond["embeds"] for c in conditionings]),
            txt_ids=first.shared["txt_ids"],
            img_ids=first.shared["img_ids"],
            return_dict=False,
        )[0]
        return prediction

    def decode(self, latents: torch.Tensor, height: int, width: int) -> np.ndarray:
        return self.decode_latents(self.pipe._unpack_latents(latents, height, width, self.vae_scale))

    def preview_latents(self, latents: torch.Tensor, height: int, width: int) -> np.ndarray:
        unpacked = self.pipe._unpack_latents(latents[:1], height, width, self.vae_scale)
        return unpacked[0].float().cpu().numpy()


FAMILY = Flux

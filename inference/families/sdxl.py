"""SDXL, its finetunes and few-step distills: two CLIP encoders, pooled embeddings and size
conditioning (`add_time_ids`) through the UNet's `added_cond_kwargs`; native 1024²."""

from __future__ import annotations

from typing import ClassVar

import torch

from inference.families import Conditioning
from inference.families.sd import UNetFamily


class StableDiffusionXL(UNetFamily):
    name: ClassVar[str] = "sdxl"

    @torch.no_grad()
    def encode(self, prompt: str, negative_prompt: str, guidance: float, height: int, width: int) -> Conditioning:
        pipe = self.pipe
        cfg = self.uses_cfg_at(guidance)
        embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
            prompt,
            device=self.device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=cfg,
            negative_prompt=negative_prompt or None,
        )
        projection_dim = (
            int(pooled.shape[-1]) if pipe.text_encoder_2 is None else pipe.text_encoder_2.config.projection_dim
        )
        # Original size = target size = the image's, no crop: what StableDiffusionXLPipeline uses.
        time_ids = pipe._get_add_time_ids(
            (height, width), (0, 0), (height, width), dtype=embeds.dtype, text_encoder_projection_dim=projection_dim
        ).to(self.device)
        return Conditioning(
            cond={"embeds": embeds, "text_embeds": pooled, "time_ids": time_ids, **self.guidance_embedding(guidance)},
            uncond={"embeds": negative, "text_embeds": negative_pooled, "time_ids": time_ids} if cfg else None,
            guidance=torch.full((1,), guidance, device=self.device, dtype=torch.float32),
            truncated=self._truncated(prompt),
        )


FAMILY = StableDiffusionXL

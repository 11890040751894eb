"""Model folders with their configs and no usable weights: what a model can do is read from them before any
weight loads, and a load would fail (so a refusal that comes from loading is told apart)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

VAE = {"_class_name": "AutoencoderKL", "block_out_channels": [128, 256, 512, 512], "latent_channels": 16}
# The configs FLUX.1-schnell ships (what decides its options), with the components' classes.
FLUX_SCHNELL: dict[str, Any] = {
    "model_index.json": {
        "_class_name": "FluxPipeline",
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "T5EncoderModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "T5TokenizerFast"],
        "transformer": ["diffusers", "FluxTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    },
    "transformer/config.json": {"_class_name": "FluxTransformer2DModel", "guidance_embeds": False, "patch_size": 1},
    "vae/config.json": VAE,
    "scheduler/scheduler_config.json": {"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 1.0},
}
# A full-step SD 1.5 finetune's.
SD15: dict[str, Any] = {
    "model_index.json": {
        "_class_name": "StableDiffusionPipeline",
        "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    },
    "unet/config.json": {"_class_name": "UNet2DConditionModel", "sample_size": 64, "time_cond_proj_dim": None},
    "vae/config.json": {**VAE, "latent_channels": 4},
    "scheduler/scheduler_config.json": {"_class_name": "PNDMScheduler"},
}


def config_only_folder(folder: Path, configs: dict[str, Any]) -> Path:
    """`folder` with these config files and a cut-off weights file beside each model config."""
    for name, content in configs.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content), encoding="utf-8")
        if name.endswith("/config.json"):
            (path.parent / "diffusion_pytorch_model.safetensors").write_bytes(b"\x08\x00\x00")
    return folder

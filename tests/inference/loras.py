"""Tiny random LoRAs for the tiny test models, made with PEFT and saved in both file formats people
share: diffusers/PEFT (`save_lora_weights`) and kohya/A1111 (`lora_unet_…` keys with lora_down/up)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers.utils import convert_state_dict_to_kohya
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file, save_file

from inference.models.loading import load_model

RANK = 4
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
# FLUX's kohya files name layers as Black Forest Labs do (fused qkv); its MLPs map one to one.
FLUX_TARGETS = {"ff.net.0.proj": "img_mlp_0", "ff.net.2": "img_mlp_2",
                "ff_context.net.0.proj": "txt_mlp_0", "ff_context.net.2": "txt_mlp_2"}  # fmt: skip


@dataclass(frozen=True)
class TinyLora:
    diffusers: Path  # diffusers/PEFT format
    kohya: Path  # the same weights, kohya/A1111 format


def make_lora(model: str, folder: Path, name: str, *, seed: int, cache_dir: Path) -> TinyLora:
    """A random rank-4 LoRA of one tiny test model, saved in both formats under `folder`."""
    loaded = load_model(model, cache_dir=cache_dir)  # a fresh copy: the shared one is never touched
    denoiser = loaded.family.denoiser
    flux = loaded.info.family == "flux"
    targets = list(FLUX_TARGETS) if flux else UNET_TARGETS
    torch.manual_seed(seed)
    config = LoraConfig(r=RANK, lora_alpha=RANK, target_modules=targets, init_lora_weights=False)
    denoiser.add_adapter(config, adapter_name="made")  # type: ignore[operator]
    state = get_peft_model_state_dict(denoiser, adapter_name="made")
    component = "transformer" if flux else "unet"
    folder.mkdir(parents=True, exist_ok=True)
    type(loaded.pipe).save_lora_weights(folder / name, **{f"{component}_lora_layers": state})
    diffusers = folder / f"{name}-diffusers.safetensors"
    (folder / name / "pytorch_lora_weights.safetensors").rename(diffusers)
    kohya = folder / f"{name}-kohya.safetensors"
    if flux:
        save_file(_flux_kohya(state), kohya)
    else:
        converted = convert_state_dict_to_kohya({f"unet.{key}": value for key, value in state.items()})
        save_file({key: value.contiguous() for key, value in converted.items()}, kohya)
    return TinyLora(diffusers, kohya)


def _flux_kohya(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        _, block, rest = key.split(".", 2)  # transformer_blocks.<i>.<module>.lora_<A|B>.weight
        module, part = rest.rsplit(".lora_", 1)
        base = f"lora_unet_double_blocks_{block}_{FLUX_TARGETS[module]}"
        out[f"{base}.lora_{'down' if part.startswith('A') else 'up'}.weight"] = value.contiguous()
        out[f"{base}.alpha"] = torch.tensor(float(RANK))
    return out


def cut_off(path: Path, target: Path) -> Path:
    """A copy of a LoRA file cut in half, as an interrupted download leaves it."""
    data = path.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    return target


def tensor_names(path: Path) -> list[str]:
    return list(load_file(path))

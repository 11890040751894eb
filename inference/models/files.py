"""What a local model path is, told from its files without loading a weight: a diffusers folder, a
single-file checkpoint (and how to convert it), or neither; and what a model folder (or a downloaded hub
snapshot) can do, from its configs. Standard library only, so the `stepgrid` command and the bot can refuse
a path or a model-specific option before a worker loads anything, with the same words the worker would use."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from inference.family_rules import PipelineConfig, model_info
from inference.model_info import ModelInfo
from inference.registry import ModelSpec

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf")


def local_source_problem(path: Path, label: str) -> str | None:
    """Why the local `path` is not a diffusers pipeline folder (one line saying what to give instead), or None
    when it is one, or is no local path at all (a hub id, or a missing folder)."""
    if path.is_file():
        return single_file_message(path, label)
    if not path.is_dir() or (path / "model_index.json").is_file():
        return None
    checkpoints = sorted(p for p in path.iterdir() if p.suffix in SINGLE_FILE_SUFFIXES and p.is_file())
    if checkpoints:
        return single_file_message(checkpoints[0], label)
    return (
        f"Model {label}: {path} has no model_index.json, so it is not a diffusers pipeline folder; give the "
        "folder that holds model_index.json (the one `save_pretrained` or `hf download` wrote)."
    )


def single_file_message(path: Path, label: str) -> str:
    """How to convert the checkpoint, for the family its tensor names show (a .safetensors header)."""
    header = safetensors_header(path)
    folder = path.with_suffix("")
    if "double_blocks." in header:  # a FLUX.1 transformer alone, as Black Forest Labs ship it
        base = "black-forest-labs/FLUX.1-dev" if "guidance_in." in header else "black-forest-labs/FLUX.1-schnell"
        convert = (
            f"from diffusers import FluxPipeline, FluxTransformer2DModel; FluxPipeline.from_pretrained('{base}', "
            f"transformer=FluxTransformer2DModel.from_single_file('{path}')).save_pretrained('{folder}')"
        )
    else:
        pipeline = "StableDiffusionXLPipeline" if "conditioner.embedders.1." in header else "StableDiffusionPipeline"
        convert = f"from diffusers import {pipeline}; {pipeline}.from_single_file('{path}').save_pretrained('{folder}')"
    return (
        f"Model {label} is a single-file checkpoint ({path.name}); Stepgrid loads diffusers folders. Convert it "
        f'once: python -c "{convert}" and give that folder.'
    )


def safetensors_header(path: Path) -> str:
    """A .safetensors file's JSON header (its tensor names); "" for another format."""
    try:
        with path.open("rb") as file:
            length = int.from_bytes(file.read(8), "little")
            return file.read(length).decode("utf-8") if 0 < length < 100_000_000 else ""
    except (OSError, UnicodeDecodeError):
        return ""


def default_cache_dir() -> Path:
    """Where models are downloaded (under hub/) and test models built, unless the operator says otherwise."""
    return Path.home() / ".cache" / "stepgrid"


def info_before_loading(spec: ModelSpec, cache_dir: str | Path | None = None) -> ModelInfo | None:
    """What the model can do (its ModelInfo, LoRAs aside), read from its folder's configs without loading a
    weight: a local folder, or a hub id already downloaded into `cache_dir`. None where that can't be told so
    (a test model, a hub id not downloaded yet, a folder of a pipeline Stepgrid doesn't run, unreadable configs):
    the loaded model says then."""
    if spec.is_test_model:
        return None
    folder: Path | None = Path(spec.source).expanduser()
    if folder is not None and not folder.is_dir():
        folder = hub_snapshot(spec, Path(cache_dir) if cache_dir else default_cache_dir())
    config = pipeline_config(folder) if folder is not None else None
    if config is None or config.family is None:
        return None
    try:
        return model_info(config, spec)
    except (ValueError, KeyError, TypeError):  # the registry's scheduler, or a config without a field: said at load
        return None


def hub_snapshot(spec: ModelSpec, cache_dir: Path) -> Path | None:
    """The folder of a hub model's snapshot already in the cache (huggingface_hub's layout), or None."""
    if spec.source.count("/") != 1 or spec.source.startswith((".", "/", "~")):
        return None
    repo = cache_dir / "hub" / f"models--{spec.source.replace('/', '--')}"
    revision = spec.revision or "main"
    try:
        commit = (repo / "refs" / revision).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        commit = revision  # a commit hash is its own snapshot's name
    snapshot = repo / "snapshots" / commit
    return snapshot if commit and (snapshot / "model_index.json").is_file() else None


def pipeline_config(folder: Path) -> PipelineConfig | None:
    """The configs of a diffusers pipeline folder that decide what it can do, or None where one is missing."""
    index = _json(folder / "model_index.json")
    pipeline = index.get("_class_name") if index else None
    if not index or not isinstance(pipeline, str):
        return None
    denoiser_folder = "transformer" if "transformer" in index else "unet"
    denoiser, vae = _json(folder / denoiser_folder / "config.json"), _json(folder / "vae" / "config.json")
    scheduler = _json(folder / "scheduler" / "scheduler_config.json")
    scheduler_class = scheduler.get("_class_name") if scheduler else None
    if denoiser is None or vae is None:
        return None
    return PipelineConfig(pipeline, scheduler_class if isinstance(scheduler_class, str) else "", denoiser, vae)


def _json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def infos_before_loading(specs: Sequence[ModelSpec], cache_dir: str | Path | None = None) -> dict[str, ModelInfo]:
    """Every model's `info_before_loading` by name, or {} unless all of them are known: then the default model
    and every name resolve as they will once loaded."""
    infos = {spec.name: info_before_loading(spec, cache_dir) for spec in specs}
    known = {name: info for name, info in infos.items() if info is not None}
    return known if len(known) == len(specs) else {}

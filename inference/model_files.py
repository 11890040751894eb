"""What a local model path is, told from its files without loading a weight: a diffusers folder, a
single-file checkpoint (and how to convert it), or neither. Standard library only, so the `stepgrid`
command can refuse a path before it starts a worker, with the same words the worker would use."""

from __future__ import annotations

from pathlib import Path

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

"""Devices, `from_pretrained` loading, and the built-in random-weight test models (one per family)."""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    DiffusionPipeline,
)

from inference.families import Family, Pipeline, family_for, supported_pipelines
from inference.family_rules import FAMILY_MODULES
from inference.model_info import ModelInfo, ModelUnavailable
from inference.models.adapters import Adapters
from inference.models.files import default_cache_dir, local_source_problem
from inference.models.hub import why_the_hub_failed
from inference.models.test_models import (
    IN_MEMORY_TEST_MODELS,
    TEST_MODEL_NATIVE_SIZE,
    build_test_pipeline,
    ensure_test_model,
)
from inference.protocol import WorkerConfig
from inference.registry import ModelSpec, spec_for

log = logging.getLogger(__name__)


def resolve_device(device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
    """CUDA fp16 when present, else CPU fp32; either can be overridden."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dtype == "auto":
        return dev, torch.float16 if dev.type == "cuda" else torch.float32
    dtypes = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if dtype not in dtypes:
        raise ValueError(f"dtype must be one of {', '.join(['auto', *dtypes])}; got {dtype!r}.")
    return dev, dtypes[dtype]


def _first_sentence(text: str, limit: int = 200) -> str:
    """diffusers' loading errors run to paragraphs; the first sentence says what went wrong."""
    first = text.strip().split("\n")[0]
    first = re.sub(r"^Cannot load model [^:]+: ", "", first)  # diffusers repeats the model id
    for end in (". ", " ("):
        if end in first:
            first = first[: first.index(end)]
    return first if len(first) <= limit else first[: limit - 1] + "…"


@dataclass
class LoadedModel:
    pipe: Pipeline
    name: str
    device: torch.device
    dtype: torch.dtype
    is_test_model: bool
    load_seconds: float
    family: Family
    info: ModelInfo
    adapters: Adapters | None = None  # its registry LoRAs (None: it has none)


class ModelLoadError(RuntimeError):
    """The model could not be loaded; the message is one line, safe to show an operator."""


def load_model(
    spec: ModelSpec | str,
    *,
    device: str = "auto",
    dtype: str = "auto",
    cache_dir: str | Path | None = None,
) -> LoadedModel:
    """Load one model through `from_pretrained` (hub id, local folder or a built-in test model)."""
    spec = spec_for(spec) if isinstance(spec, str) else spec
    started = time.perf_counter()
    torch_device, torch_dtype = resolve_device(device, dtype)
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    is_test_model = spec.is_test_model
    source = spec.source
    if is_test_model and spec.source not in IN_MEMORY_TEST_MODELS:
        source = str(ensure_test_model(spec.source, cache))
    label = repr(spec.source) if spec.name == spec.source else f"{spec.name!r} from {spec.source!r}"
    if not is_test_model:
        _check_local_source(Path(source).expanduser(), label)
    try:
        if spec.source in IN_MEMORY_TEST_MODELS:
            pipe = _build_in_memory(spec.source, torch_device, torch_dtype)
        else:
            pipe = DiffusionPipeline.from_pretrained(
                source,
                dtype=torch_dtype,
                variant=spec.variant,
                revision=spec.revision,
                cache_dir=str(cache / "hub") if not is_test_model else None,
                safety_checker=None,
                requires_safety_checker=False,
            )
    except Exception as exc:
        # A folder or a download fails to load in many of diffusers' and torch's ways (OSError for a
        # missing file, AttributeError for a pipeline class diffusers lacks, the safetensors error for a
        # cut-off file…): each is the model's fault, told in one line, never a worker crash.
        reason = _first_sentence(str(exc)).removesuffix(".") or type(exc).__name__
        folder = Path(source).expanduser().exists()
        if not is_test_model and not folder:
            # diffusers says "not cached locally" whether the hub was unreachable or has no such model.
            reason = why_the_hub_failed(source) or reason
        fix = "Save or download that folder again, whole, or give" if folder else "Give a local diffusers folder,"
        if spec.variant and "variant" in reason:
            fix = f"Leave out variant = {spec.variant!r} (this model has no such weights), or give"
        raise ModelLoadError(
            f"Could not load model {label} ({reason}). {fix} a hub id that can be downloaded, "
            f"or a test model such as 'tiny' (--model, STEPGRID_MODEL or a registry source)."
        ) from exc
    try:
        family = family_for(pipe, spec, torch_device, torch_dtype)
    except LookupError:
        raise ModelLoadError(_unsupported_pipeline_message(label, type(pipe).__name__)) from None
    try:
        info = family.info()
    except ValueError as exc:
        raise ModelLoadError(f"Model {spec.name!r}: {exc}.") from None
    if is_test_model and spec.source not in IN_MEMORY_TEST_MODELS and spec.source != "sd15-arch":
        info = _with_native_size(info, TEST_MODEL_NATIVE_SIZE)
    pipe.to(torch_device)
    pipe.set_progress_bar_config(disable=True)
    if torch_device.type == "cuda":
        denoiser: Any = family.denoiser
        denoiser.to(memory_format=torch.channels_last)
    adapters = Adapters(pipe, family, cache_dir=cache)
    if spec.loras:
        adapters.load_all(spec.loras)
        info = replace(info, loras=adapters.infos(info), unavailable_loras=tuple(adapters.unavailable))
    seconds = time.perf_counter() - started
    return LoadedModel(pipe, spec.name, torch_device, torch_dtype, is_test_model, seconds, family, info, adapters)


def _check_local_source(path: Path, label: str) -> None:
    """Refuse, before loading anything, a local path that isn't a pipeline folder Stepgrid runs: a
    single-file checkpoint (say how to convert it), a folder without model_index.json, or a folder of
    a pipeline no family adapter takes (diffusers would load every weight before that shows)."""
    if (problem := local_source_problem(path, label)) is not None:
        raise ModelLoadError(problem)
    if not path.is_dir():
        return  # a hub id, or a missing folder: from_pretrained says which
    try:
        pipeline = json.loads((path / "model_index.json").read_text(encoding="utf-8")).get("_class_name")
    except (OSError, ValueError, AttributeError):
        return  # a damaged index: from_pretrained's own error says what is wrong with it
    if isinstance(pipeline, str) and pipeline not in FAMILY_MODULES:
        raise ModelLoadError(_unsupported_pipeline_message(label, pipeline))


def _unsupported_pipeline_message(label: str, pipeline: str) -> str:
    return (
        f"Model {label} is a {pipeline}; Stepgrid runs {supported_pipelines()} models: "
        "give one of those (--model, STEPGRID_MODEL or a registry source)."
    )


def _build_in_memory(name: str, device: torch.device, dtype: torch.dtype) -> Pipeline:
    """A full-size random-weight pipeline built straight on the device (initialising 12B parameters
    on a GPU takes seconds), seeded so every run is the same model."""
    log.info("building the random-weight %r on %s (benchmark architecture, not a real model)", name, device)
    torch.manual_seed(0)
    with torch.device(device):
        pipe = build_test_pipeline(name)
    pipe.to(dtype=dtype)
    return pipe


def _with_native_size(info: ModelInfo, size: int) -> ModelInfo:
    return replace(info, native_size=size)


def load_models(config: WorkerConfig) -> tuple[list[LoadedModel], list[ModelUnavailable]]:
    """Load every model of the registry; one that fails is reported, the others still load."""
    loaded: list[LoadedModel] = []
    unavailable: list[ModelUnavailable] = []
    for spec in config.models:
        try:
            loaded.append(load_model(spec, device=config.device, dtype=config.dtype, cache_dir=config.cache_dir))
        except ModelLoadError as exc:
            log.error("model %s is unavailable: %s", spec.name, exc)
            unavailable.append(ModelUnavailable(spec.name, str(exc)))
    return loaded, unavailable

"""LoRAs: loaded once per model through diffusers' PEFT integration, switched per denoiser call.

`load_lora_weights(..., adapter_name=)` adds each registry LoRA's layers beside the base weights,
which it never changes; `set_adapters(names, weights)` picks the active set and its weights, and
`disable_lora()` runs the base model alone. The engine groups lanes by (model, adapter set, size)
and calls `activate` before each group's denoiser call, so switching costs no reload. A cap keeps
the loaded adapters bounded: past it the least recently used one is unloaded (and loaded again,
from its file, when a request names it).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from inference.families import Family, Pipeline
from inference.family_rules import FEW_STEP_LADDER
from inference.model_info import LoraInfo, ModelInfo, ModelUnavailable
from inference.registry import LoraSpec
from inference.requests import MAX_LORAS

log = logging.getLogger(__name__)

# An adapter set as the engine groups lanes by it: (name, weight) pairs in name order ( = no LoRA).
AdapterKey = tuple[tuple[str, float], ...]

ADAPTERS_KEPT = 16  # LoRAs kept loaded per model; each costs its own weights' memory (MBs to 100s of MBs)
FEW_STEP_STEPS = 4  # LCM/TCD/Lightning/Hyper LoRA cards: 4 to 8 steps
FLOW_FEW_STEP_STEPS = 8  # Hyper-FLUX and the FLUX turbo LoRAs: 8 steps

_LCM = re.compile(r"lcm")
_TCD = re.compile(r"tcd")


class LoraLoadError(RuntimeError):
    """A LoRA could not be loaded into its model; the message is one line naming it."""


def adapter_key(loras: Sequence[tuple[str, float]]) -> AdapterKey:
    """The canonical form of a request's LoRAs: lanes with equal keys share denoiser calls."""
    return tuple(sorted((name, float(weight)) for name, weight in loras))


class Adapters:
    """The LoRAs of one loaded model: which fit it, which are loaded now, and which set is active."""

    def __init__(self, pipe: Pipeline, family: Family, *, cache_dir: Path | None = None, kept: int = ADAPTERS_KEPT):
        if kept < MAX_LORAS:
            raise ValueError(f"keep at least {MAX_LORAS} LoRAs loaded (one request may stack that many)")
        self.pipe = pipe
        self.family = family
        self.cache_dir = cache_dir
        self.kept = kept
        self.specs: dict[str, LoraSpec] = {}  # the LoRAs that loaded and fit this model
        self.unavailable: list[ModelUnavailable] = []
        self.loaded: OrderedDict[str, None] = OrderedDict()  # least recently used first
        self.active: AdapterKey = ()
        self._stale = False  # load_lora_weights activated what it loaded: the next activate resets
        self._layers: list[Any] | None = None  # the PEFT LoRA layers, found once per load
        self.hashes: dict[str, str] = {}  # A1111's short hash of each LoRA's file, for "Lora hashes"
        self.loads = 0  # times a LoRA was read from its file (tests: switching never reloads)

    # -- start-up -------------------------------------------------------------------------------

    def load_all(self, specs: Sequence[LoraSpec]) -> None:
        """Load every registry LoRA once (to check it fits); one that fails is reported by name and the
        rest serve. Past the cap the least recently used are unloaded again; all end inactive."""
        for spec in specs:
            try:
                self._load(spec)
                if spec.scheduler is not None and spec.scheduler not in self.family.schedulers:
                    self._forget(spec.name)
                    raise LoraLoadError(
                        f"LoRA {spec.name!r}: the scheduler {spec.scheduler!r} can't run on this {self.family.name} "
                        f"model; choose one of: {', '.join(self.family.schedulers)}."
                    )
            except LoraLoadError as exc:
                log.error("LoRA %s of model %s is unavailable: %s", spec.name, self.family.spec.name, exc)
                self.unavailable.append(ModelUnavailable(spec.name, str(exc)))
                continue
            self.specs[spec.name] = spec
            if (digest := self._hash(spec)) is not None:
                self.hashes[spec.name] = digest
            self._evict(keep=(spec.name,))
        self.activate(())

    def _load(self, spec: LoraSpec) -> None:
        """load_lora_weights under the LoRA's registry name; LoraLoadError with one line on failure."""
        if spec.name in self.loaded:
            return
        source, kwargs = self._source(spec)
        try:
            self.pipe.load_lora_weights(source, adapter_name=spec.name, **kwargs)
        except Exception as exc:  # a cut-off file, a LoRA of another family (shape or key mismatch), a hub error
            self._forget(spec.name)
            raise LoraLoadError(self._why(spec, exc)) from exc
        if not any(spec.name in names for names in self.pipe.get_list_adapters().values()):
            self._forget(spec.name)
            raise LoraLoadError(
                f"LoRA {spec.name!r} ({spec.source}) has no weights for any part of this {self.family.name} model: "
                f"it is a LoRA of another model family; list it under a model of its own family."
            )
        self.loads += 1
        self.loaded[spec.name] = None
        self._stale = True
        self._layers = None

    def _source(self, spec: LoraSpec) -> tuple[str, dict[str, Any]]:
        kwargs: dict[str, Any] = {}
        if spec.weight_name:
            kwargs["weight_name"] = spec.weight_name
        if spec.is_local_file:
            path = Path(spec.source).expanduser()
            if not path.exists():
                raise LoraLoadError(f"LoRA {spec.name!r}: no such file {path}; fix its source in the registry.")
            return str(path), kwargs
        if self.cache_dir is not None:
            kwargs["cache_dir"] = str(self.cache_dir / "hub")
        return spec.source, kwargs

    def _hash(self, spec: LoraSpec) -> str | None:
        """The file's short hash as A1111 names LoRAs: SHA-256 of a .safetensors file's tensor data
        (after its header), the first 12 hex digits. None for a hub LoRA not in the local cache."""
        path = self._file(spec)
        if path is None or not path.is_file():
            return None
        digest = hashlib.sha256()
        with path.open("rb") as file:
            header = int.from_bytes(file.read(8), "little")
            file.seek(8 + header if path.suffix == ".safetensors" else 0)
            for chunk in iter(lambda: file.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest()[:12]

    def _file(self, spec: LoraSpec) -> Path | None:
        if spec.is_local_file:
            path = Path(spec.source).expanduser()
            return path / spec.weight_name if path.is_dir() and spec.weight_name else path
        if not spec.weight_name:
            return None
        try:
            from huggingface_hub import hf_hub_download

            cache = str(self.cache_dir / "hub") if self.cache_dir is not None else None
            return Path(hf_hub_download(spec.source, spec.weight_name, cache_dir=cache, local_files_only=True))
        except Exception:  # not cached where we look: no hash, the image says so by leaving it out
            return None

    def _why(self, spec: LoraSpec, exc: Exception) -> str:
        text = str(exc)
        if "size mismatch" in text or "Incompatible keys" in text or "shape" in text:
            reason = f"its layers don't fit this {self.family.name} model: it is a LoRA of another model family"
            fix = "list it under a model of its own family"
        elif isinstance(exc, OSError) or "safetensors" in text.lower() or "header" in text.lower():
            reason = "the file can't be read as LoRA weights (cut off or not a LoRA)"
            fix = "download it again, whole"
        else:
            first = text.strip().split("\n")[0][:160] or type(exc).__name__
            reason = first.removesuffix(".")
            fix = "check its source and weight_name"
        return f"LoRA {spec.name!r} ({spec.source}) could not be loaded: {reason}; {fix}."

    def _forget(self, name: str) -> None:
        """Remove whatever a failed or evicted load left of an adapter (never the base weights)."""
        try:
            self.pipe.delete_adapters(name)
        except Exception:  # nothing of it was left
            log.debug("no adapter %s to delete", name)
        self.loaded.pop(name, None)
        self._layers = None

    def _evict(self, keep: Sequence[str]) -> None:
        while len(self.loaded) > self.kept:
            victim = next((name for name in self.loaded if name not in keep), None)
            if victim is None:
                return
            self._forget(victim)
            log.info("unloaded LoRA %s of model %s (more than %d kept)", victim, self.family.spec.name, self.kept)

    # -- serving ------------------------------------------------------------------------------

    def activate(self, key: AdapterKey) -> None:
        """Make this set the active one (a no-op when it already is); loads one that was evicted."""
        if key == self.active and not self._stale:
            return
        names = [name for name, _ in key]
        for name in names:
            if name not in self.loaded:
                self._load(self.specs[name])
            self.loaded.move_to_end(name)
        self._evict(keep=names)
        # What diffusers' set_adapters / disable_lora do (set_adapter and set_scale on every LoRA
        # layer), over the LoRA layers found once instead of every module of every component.
        for layer in self._tuner_layers():
            if not key:
                if not layer.disable_adapters:
                    layer.enable_adapters(False)
                continue
            if layer.disable_adapters:
                layer.enable_adapters(True)
            layer.set_adapter(names)
            for name, weight in key:
                layer.set_scale(name, weight)
        self.active, self._stale = key, False

    def _tuner_layers(self) -> list[Any]:
        """The PEFT LoRA layers of every component (found again after a load or an unload)."""
        if self._layers is None:
            from peft.tuners.tuners_utils import BaseTunerLayer

            components = [getattr(self.pipe, name, None) for name in self.pipe._lora_loadable_modules]
            self._layers = [
                module
                for component in components
                if isinstance(component, torch.nn.Module)
                for module in component.modules()
                if isinstance(module, BaseTunerLayer)
            ]
        return self._layers

    def infos(self, base: ModelInfo) -> tuple[LoraInfo, ...]:
        """What the bot is told of each LoRA that serves: defaults, triggers, few-step settings."""
        return tuple(lora_info(spec, self.family, base, self.hashes.get(spec.name, "")) for spec in self.specs.values())


def lora_info(spec: LoraSpec, family: Family, base: ModelInfo, digest: str = "") -> LoraInfo:
    """A LoRA's defaults; a step-distillation one replaces the model's ladder, scheduler and guidance
    as its card asks: LCM-LoRA runs LCM at guidance 1, TCD-LoRA TCD at guidance 0 (eta 0.3, the scheduler
    table's), Lightning/Hyper Euler at guidance 0 (one row), trailing spacing (the scheduler's, set per
    lane) and 4 steps; on FLUX it keeps the model's guidance. The registry's `scheduler` (`"TCD"` on a
    TCD-LoRA whose name doesn't say so), `steps` and `guidance` win over these guesses."""
    if not spec.few_step:
        return LoraInfo(spec.name, spec.weight, spec.triggers, hash=digest)
    schedulers = family.schedulers  # the family's whole table: LCM too, which fits a step-distilled UNet
    flow = family.name not in ("sd", "sdxl")
    if flow:
        scheduler, guidance, steps = "Euler", base.default_guidance, FLOW_FEW_STEP_STEPS
    elif _LCM.search(f"{spec.name} {spec.source}".lower()):
        scheduler, guidance, steps = "LCM", 1.0, FEW_STEP_STEPS
    elif _TCD.search(f"{spec.name} {spec.source}".lower()) or spec.scheduler == "TCD":
        scheduler, guidance, steps = "TCD", 0.0, FEW_STEP_STEPS
    else:
        scheduler, guidance, steps = "Euler", 0.0, FEW_STEP_STEPS
    return LoraInfo(
        spec.name,
        spec.weight,
        spec.triggers,
        few_step=True,
        default_steps=spec.steps or steps,
        default_scheduler=spec.scheduler or scheduler,
        default_guidance=guidance if spec.guidance is None else spec.guidance,
        compare_steps=FEW_STEP_LADDER,
        schedulers=tuple(schedulers),
        hash=digest,
    )

"""The operator's model registry: named models from a TOML file or an environment value.

Stdlib only (the bot imports it without torch). The first model is the default one. A registry
looks like this (a file, or the same text in an environment value):

    [[models]]
    name = "sd15"
    source = "stable-diffusion-v1-5/stable-diffusion-v1-5"

    [[models]]
    name = "sdxl-turbo"
    source = "stabilityai/sdxl-turbo"
    variant = "fp16"
    steps = 4
    guidance = 0.0
    compare_steps = [1, 2, 3, 4, 6, 8]
    max_steps = 8

    [[models]]
    name = "my-distill"             # a few-step distill whose name doesn't say so
    source = "/models/my-distill"
    few_step = true

      [[models.loras]]              # LoRAs of that model: a local .safetensors file (kohya/A1111 or
      name = "pixel"                # diffusers/PEFT format) or a hub id with weight_name
      source = "/loras/pixel-art.safetensors"
      weight = 0.8                  # the default weight (1.0)
      triggers = ["pixel art"]      # words its training used, shown to members

      [[models.loras]]
      name = "lcm"
      source = "latent-consistency/lcm-lora-sdv1-5"
      weight_name = "pytorch_lora_weights.safetensors"
      few_step = true               # a step-distillation LoRA: few-step ladder, scheduler and guidance

On one line, for an environment variable: `models = [{name = "a", source = "tiny"}, {...}]`.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inference.clipping import clip, echo

# Built-in random-weight test models, one per family (built offline from configs).
TEST_MODEL_NAMES: tuple[str, ...] = (
    "tiny",
    "tiny-sdxl",
    "tiny-flux",
    "tiny-flux-dev",
    "tiny-sd3",
    "sd15-arch",
    "sdxl-arch",
    "flux-schnell-arch",
)

# The request ranges a model's defaults must fit (protocol.py checks these agree with its own).
STEPS_RANGE = (1, 150)
GUIDANCE_RANGE = (0.0, 30.0)
COMPARE_CELLS_RANGE = (2, 12)

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,39}$")

# The weights a LoRA can be given (A1111 allows any; past ±2 a LoRA only breaks the image).
LORA_WEIGHT_RANGE = (-2.0, 2.0)


class RegistryError(ValueError):
    """The registry can't be read; the message is one line naming what to fix."""


@dataclass(frozen=True)
class ModelSpec:
    """One model the operator offers: where it comes from and its optional defaults and ceilings."""

    name: str
    source: str  # hub id, local diffusers folder, or a built-in test model name
    variant: str | None = None  # e.g. "fp16": the weights saved as *.fp16.safetensors
    revision: str | None = None  # a hub branch, tag or commit, to pin what is downloaded
    steps: int | None = None
    scheduler: str | None = None
    guidance: float | None = None
    compare_steps: tuple[int, ...] | None = None
    max_steps: int | None = None
    few_step: bool | None = None  # a few-step distill (Turbo, Lightning, …); None: told by its name
    loras: tuple[LoraSpec, ...] = ()

    @property
    def is_test_model(self) -> bool:
        return self.source in TEST_MODEL_NAMES


@dataclass(frozen=True)
class LoraSpec:
    """One LoRA the operator offers with a model: where it comes from, its default weight, its
    trigger words, and whether it is a step-distillation LoRA (LCM, TCD, Lightning, Hyper)."""

    name: str
    source: str  # a local .safetensors file, or a hub id (with weight_name)
    weight_name: str | None = None  # the file inside a hub repository or local folder
    weight: float = 1.0
    triggers: tuple[str, ...] = ()
    few_step: bool = False
    # A few-step LoRA's defaults where the family's guess isn't what its card says.
    steps: int | None = None
    scheduler: str | None = None
    guidance: float | None = None

    @property
    def is_local_file(self) -> bool:
        """A path on this host (absolute, ~, ./ or a *.safetensors name), not a hub id."""
        return self.source.startswith(("/", "~", "./", "../")) or self.source.endswith(".safetensors")


LORA_KEYS: tuple[str, ...] = (
    "name",
    "source",
    "weight_name",
    "weight",
    "triggers",
    "few_step",
    "steps",
    "scheduler",
    "guidance",
)


ALLOWED_KEYS: tuple[str, ...] = (
    "name",
    "source",
    "variant",
    "revision",
    "steps",
    "scheduler",
    "guidance",
    "compare_steps",
    "max_steps",
    "few_step",
    "loras",
)


def spec_for(model: str) -> ModelSpec:
    """The one-model shorthand (STEPGRID_MODEL, --model): the source is also the name."""
    return ModelSpec(name=model, source=model)


def parse_registry(text: str, *, where: str = "the model registry") -> tuple[ModelSpec, ...]:
    """Parse registry TOML text into specs; raises RegistryError with one line."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RegistryError(f"{where} is not valid TOML: {exc}.") from None
    extra = sorted(set(data) - {"models"})
    if extra:
        raise RegistryError(f"{where}: unknown top-level key {echo(extra[0])}; write the models as [[models]] tables.")
    entries = data.get("models")
    if not isinstance(entries, list) or not entries:
        raise RegistryError(f"{where} lists no models: add at least one [[models]] table with a name and a source.")
    specs = tuple(_spec(entry, number, where) for number, entry in enumerate(entries, start=1))
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise RegistryError(f"{where}: the model name {echo(spec.name)} is used twice; names must be unique.")
        seen.add(spec.name)
    return specs


def load_registry(path: Path) -> tuple[ModelSpec, ...]:
    """Read a registry TOML file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RegistryError(f"can't read the model registry {clip(str(path), 200)}: {exc.strerror or exc}.") from None
    return parse_registry(text, where=clip(str(path), 200))


def models_from_setting(value: str) -> tuple[ModelSpec, ...]:
    """A model setting: a registry file (*.toml), registry TOML text, or one model (name = source)."""
    value = value.strip()
    if value.endswith(".toml"):
        return load_registry(Path(value).expanduser())
    if value.startswith(("[", "models")):
        return parse_registry(value, where="the model setting")
    if not value:
        raise RegistryError("no model is configured: give a hub id, a local folder, a test model or a registry file.")
    return (spec_for(value),)


def _named_table(
    entry: object, number: int, where: str, kind: str, allowed: Sequence[str]
) -> tuple[dict[str, Any], str, str]:
    """A model's or LoRA's table with its keys checked: (the table, its valid name, the label naming it)."""
    label = f"{where}, {kind} {number}"
    if not isinstance(entry, dict):
        raise RegistryError(f"{label}: expected a table with a name and a source.")
    unknown = [key for key in entry if key not in allowed]
    if unknown:
        raise RegistryError(f"{label}: unknown key {echo(unknown[0])}; allowed keys: {', '.join(allowed)}.")
    for key in ("name", "source"):
        if key not in entry:
            raise RegistryError(f"{label}: missing {echo(key)} (every {kind} needs a name and a source).")
    name = _typed(entry, "name", str, label)
    label = f"{where}, {kind} {echo(name)}"
    if not _NAME.match(name):
        raise RegistryError(
            f"{label}: a name is 1-40 lower-case letters, digits, '.', '_' or '-', starting with a letter or digit."
        )
    return entry, name, label


def _spec(entry: object, number: int, where: str) -> ModelSpec:
    entry, name, label = _named_table(entry, number, where, "model", ALLOWED_KEYS)
    source = _typed(entry, "source", str, label)
    if not source.strip():
        raise RegistryError(f"{label}: 'source' is empty; give a hub id, a local folder or a test model name.")
    steps = _positive(entry, "steps", label)
    max_steps = _positive(entry, "max_steps", label)
    compare = entry.get("compare_steps")
    low, high = STEPS_RANGE
    if compare is not None:
        cells_low, cells_high = COMPARE_CELLS_RANGE
        if (
            not isinstance(compare, list)
            or not cells_low <= len(compare) <= cells_high
            or len(set(compare)) != len(compare)
            or not all(_is_int(n) and low <= n <= high for n in compare)
        ):
            raise RegistryError(
                f"{label}: 'compare_steps' must be {cells_low} to {cells_high} different step counts from {low} "
                f"to {high}, like [1, 2, 4, 8]."
            )
        compare = tuple(compare)
    guidance = _guidance(entry, label)
    if steps is not None and max_steps is not None and steps > max_steps:
        raise RegistryError(f"{label}: 'steps' ({steps}) is above 'max_steps' ({max_steps}).")
    if compare and max_steps is not None and max(compare) > max_steps:
        raise RegistryError(f"{label}: 'compare_steps' goes above 'max_steps' ({max_steps}).")
    variant = entry.get("variant")
    revision = entry.get("revision")
    scheduler = entry.get("scheduler")
    return ModelSpec(
        name=name,
        source=source.strip(),
        variant=_typed(entry, "variant", str, label) if variant is not None else None,
        revision=_typed(entry, "revision", str, label) if revision is not None else None,
        steps=steps,
        scheduler=_typed(entry, "scheduler", str, label) if scheduler is not None else None,
        guidance=guidance,
        compare_steps=compare,
        max_steps=max_steps,
        few_step=_flag(entry, "few_step", label),
        loras=_loras(entry.get("loras"), label),
    )


def _loras(entries: object, where: str) -> tuple[LoraSpec, ...]:
    if entries is None:
        return ()
    if not isinstance(entries, list):
        raise RegistryError(f"{where}: 'loras' must be [[models.loras]] tables, each with a name and a source.")
    specs = tuple(_lora(entry, number, where) for number, entry in enumerate(entries, start=1))
    names = [spec.name for spec in specs]
    for name in names:
        if names.count(name) > 1:
            raise RegistryError(f"{where}: the LoRA name {name!r} is used twice; names must be unique per model.")
    return specs


def _lora(entry: object, number: int, where: str) -> LoraSpec:
    entry, name, label = _named_table(entry, number, where, "LoRA", LORA_KEYS)
    source = _typed(entry, "source", str, label).strip()
    if not source:
        raise RegistryError(f"{label}: 'source' is empty; give a local .safetensors file or a hub id.")
    weight = entry.get("weight", 1.0)
    w_low, w_high = LORA_WEIGHT_RANGE
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not w_low <= weight <= w_high:
        raise RegistryError(f"{label}: 'weight' must be a number from {w_low:g} to {w_high:g}; got {echo(weight)}.")
    triggers = entry.get("triggers", [])
    if not isinstance(triggers, list) or not all(isinstance(t, str) and t.strip() for t in triggers):
        raise RegistryError(f"{label}: 'triggers' must be a list of words, like [\"pixel art\"].")
    weight_name = entry.get("weight_name")
    scheduler = entry.get("scheduler")
    return LoraSpec(
        name=name,
        source=source,
        weight_name=_typed(entry, "weight_name", str, label) if weight_name is not None else None,
        weight=float(weight),
        triggers=tuple(t.strip() for t in triggers),
        few_step=bool(_flag(entry, "few_step", label)),
        steps=_positive(entry, "steps", label),
        scheduler=_typed(entry, "scheduler", str, label) if scheduler is not None else None,
        guidance=_guidance(entry, label),
    )


def _guidance(entry: dict[str, Any], label: str) -> float | None:
    guidance = entry.get("guidance")
    if guidance is None:
        return None
    g_low, g_high = GUIDANCE_RANGE
    if isinstance(guidance, bool) or not isinstance(guidance, int | float) or not g_low <= guidance <= g_high:
        raise RegistryError(f"{label}: 'guidance' must be a number from {g_low:g} to {g_high:g}; got {echo(guidance)}.")
    return float(guidance)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _typed(entry: dict[str, Any], key: str, kind: type, label: str) -> Any:
    value = entry[key]
    if not isinstance(value, kind):
        raise RegistryError(f"{label}: {echo(key)} must be a {kind.__name__}; got {echo(value)}.")
    return value


def _flag(entry: dict[str, Any], key: str, label: str) -> bool | None:
    value = entry.get(key)
    if value is not None and not isinstance(value, bool):
        raise RegistryError(f"{label}: {echo(key)} must be true or false; got {echo(value)}.")
    return value


def _positive(entry: dict[str, Any], key: str, label: str) -> int | None:
    value = entry.get(key)
    if value is None:
        return None
    low, high = STEPS_RANGE
    if not _is_int(value) or not low <= value <= high:
        raise RegistryError(f"{label}: {echo(key)} must be a whole number from {low} to {high}; got {echo(value)}.")
    return int(value)

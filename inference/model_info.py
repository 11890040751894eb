"""What a loaded model can do, and its LoRAs, as the worker reports them: the bot's options come from here.

Standard library only, as `inference.protocol`.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass

from inference.requests import DEFAULT_HIRES_STRENGTH, DEFAULT_STRENGTH, InvalidRequest

# How a model uses the guidance value (ModelInfo.guidance_mode). A negative prompt is the
# unconditional row of classifier-free guidance, so only "cfg" models above guidance 1 use one;
# anywhere else it would be silently ignored, so it is refused.
GUIDANCE_CFG = "cfg"  # classifier-free guidance above 1 (two rows per lane), none at 1 or below
GUIDANCE_INPUT = "input"  # the denoiser takes it as an input: FLUX.1-dev, LCM-distilled UNets
GUIDANCE_IGNORED = "ignored"  # distilled without it: FLUX.1-schnell


@dataclass(frozen=True)
class LoraInfo:
    """A LoRA a loaded model serves, as the worker reports it: the bot's choices and defaults."""

    name: str  # registry name users type
    default_weight: float = 1.0
    triggers: tuple[str, ...] = ()
    few_step: bool = False  # a step-distillation LoRA: the defaults below replace the model's
    default_steps: int | None = None
    default_scheduler: str | None = None
    default_guidance: float | None = None
    compare_steps: tuple[int, ...] | None = None
    schedulers: tuple[str, ...] = ()  # what the model can run with it (a few-step LoRA adds LCM)
    hash: str = ""  # A1111's short hash of its file ("Lora hashes"); "" where the file isn't at hand


class UnknownLora(InvalidRequest):
    """A request names a LoRA its model doesn't serve."""


@dataclass(frozen=True)
class ModelInfo:
    """What a loaded model can do, as the worker reports it: the bot's options come from here."""

    name: str  # registry name users type
    family: str  # "sd", "sdxl", "flux", "sd3"
    schedulers: tuple[str, ...]  # A1111 names this model can run
    default_scheduler: str
    default_steps: int
    default_guidance: float
    compare_steps: tuple[int, ...]  # default /compare-steps ladder
    native_size: int  # 512, 1024 …
    size_multiple: int  # width/height must be a multiple of this
    max_steps: int | None = None  # operator ceiling from the registry
    guidance_mode: str = GUIDANCE_CFG  # GUIDANCE_CFG, GUIDANCE_INPUT or GUIDANCE_IGNORED
    is_test_model: bool = False
    loras: tuple[LoraInfo, ...] = ()
    unavailable_loras: tuple[ModelUnavailable, ...] = ()  # registry LoRAs that failed to load

    def lora(self, name: str) -> LoraInfo:
        """The LoRA of that name; UnknownLora names the close ones (or says why it isn't served)."""
        for lora in self.loras:
            if lora.name == name:
                return lora
        for failed in self.unavailable_loras:
            if failed.name == name:
                raise UnknownLora(f"The LoRA {name!r} didn't load on this worker: {failed.message}")
        names = [lora.name for lora in self.loras]
        if not names:
            raise UnknownLora(f"The model {self.name} has no LoRAs; leave {name!r} out.")
        close = difflib.get_close_matches(name.strip().casefold(), names, n=3, cutoff=0.5)
        hint = f" (close: {', '.join(close)})" if close else ""
        raise UnknownLora(f"Unknown LoRA {name!r} for the model {self.name}{hint}; its LoRAs: {', '.join(names)}.")

    def schedulers_with(self, loras: Sequence[tuple[str, float]]) -> tuple[str, ...]:
        """The schedulers this model runs with these LoRAs (a few-step LoRA allows LCM)."""
        extra = [s for name, _ in loras for s in self.lora(name).schedulers if s not in self.schedulers]
        return self.schedulers + tuple(dict.fromkeys(extra))

    def few_step_lora(self, loras: Sequence[tuple[str, float]]) -> LoraInfo | None:
        """The first step-distillation LoRA among these, whose defaults replace the model's."""
        return next((info for name, _ in loras if (info := self.lora(name)).few_step), None)

    default_strength: float = DEFAULT_STRENGTH  # img2img, Vary
    hires_strength: float = DEFAULT_HIRES_STRENGTH  # the hires pass and Upscale


@dataclass(frozen=True)
class ModelUnavailable:
    """A configured model that did not load; the others keep working."""

    name: str
    message: str  # one line, safe for an operator and a user

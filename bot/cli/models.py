"""`stepgrid models`: the configured registry, then each model loaded as members will see it."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from collections.abc import Sequence

from bot.cli.arguments import TINY_MODELS, checked_hardware
from bot.cli.generate import quiet_worker
from bot.cli.outputs import TEST_MODEL_NOTE
from bot.config import Settings
from bot.errors import InvalidOption
from bot.limits.server import EffectiveLimits
from inference.model_info import GUIDANCE_IGNORED, GUIDANCE_INPUT, ModelInfo
from inference.protocol import SAFETY_CHECKER_FAILED, WorkerReady
from inference.queues.base import ModelsUnavailable, WorkerUnavailable
from inference.queues.local import LocalJobQueue
from inference.registry import ModelSpec


def configured_lines(specs: Sequence[ModelSpec]) -> list[str]:
    """The registry as `stepgrid models` lists it: name, source and the operator's overrides."""
    lines = []
    for number, spec in enumerate(specs):
        extras = [
            f"{key} {value if not isinstance(value, tuple) else ','.join(map(str, value))}"
            for key, value in (
                ("variant", spec.variant),
                ("revision", spec.revision),
                ("steps", spec.steps),
                ("scheduler", spec.scheduler),
                ("guidance", spec.guidance),
                ("ladder", spec.compare_steps),
                ("max steps", spec.max_steps),
            )
            if value is not None
        ]
        default = " (default)" if number == 0 else ""
        lines.append(f"  {spec.name}{default}: {spec.source}" + (f" · {', '.join(extras)}" if extras else ""))
        for lora in spec.loras:
            where = f"{lora.source} ({lora.weight_name})" if lora.weight_name else lora.source
            few = ", few-step" if lora.few_step else ""
            lines.append(f"    LoRA {lora.name}: {where} · weight {lora.weight:g}{few}")
    return lines


def loaded_lines(model: ModelInfo, limits: EffectiveLimits) -> list[str]:
    """One loaded model as `stepgrid models` shows it: family, defaults, ladder, sizes, ceilings."""
    defaults = limits.request_defaults(model)
    guidance = guidance_text(model)
    ceiling = limits.max_steps_for(model.name)
    note = f" — {TEST_MODEL_NOTE}" if model.is_test_model else ""
    return [
        f"  {model.name}: {model.family}{note}",
        f"    defaults: {defaults.steps} steps, {defaults.scheduler}, {guidance}, "
        f"{defaults.width}x{defaults.height} (native {model.native_size}, multiples of {model.size_multiple})",
        f"    compare-steps ladder: {','.join(map(str, defaults.compare_steps))}; max steps {ceiling}",
        f"    schedulers: {', '.join(model.schedulers)}",
        *lora_lines(model),
    ]


def lora_lines(model: ModelInfo) -> list[str]:
    """A model's LoRAs as `stepgrid models` shows them: weight, trigger words, few-step defaults;
    then the ones that didn't load, each with why."""
    lines = []
    for lora in model.loras:
        parts = [f"weight {lora.default_weight:g}"]
        if lora.triggers:
            parts.append(f"triggers: {', '.join(lora.triggers)}")
        if lora.few_step:
            parts.append(f"few-step: {lora.default_steps} steps, {lora.default_scheduler}, guidance "
                         f"{lora.default_guidance:g}")  # fmt: skip
        lines.append(f"    LoRA {lora.name}: {'; '.join(parts)}")
    lines += [f"    LoRA {failed.name} unavailable: {failed.message}" for failed in model.unavailable_loras]
    return lines


def guidance_text(model: ModelInfo) -> str:
    """How a model takes guidance, for `stepgrid models`: what a member can change and what not."""
    if model.guidance_mode == GUIDANCE_IGNORED:
        return "no guidance (ignored), no negative prompt"
    if model.guidance_mode == GUIDANCE_INPUT:
        return f"guidance {model.default_guidance:g} (a model input), no negative prompt"
    if model.default_guidance <= 1:
        return f"guidance {model.default_guidance:g} (no CFG; a negative prompt needs guidance above 1)"
    return f"guidance {model.default_guidance:g}"


def checker_line(checker: str, threshold: float) -> str:
    """The image checker the worker loaded, as `stepgrid models` shows it."""
    if checker == "none":
        return "image checker: none (STEPGRID_SAFETY_CHECKER): pictures are posted unchecked in every channel"
    return f"image checker: {checker}, flags a score of {threshold:g} or more"


async def load_models(settings: Settings, specs: Sequence[ModelSpec]) -> WorkerReady:
    """Start a worker with `specs`, wait until it reports what loaded, and stop it."""
    # The operator's image checker too, as `stepgrid run` loads it: one that can't load is said here.
    config = dataclasses.replace(settings.worker_config(), model="", models=tuple(specs))
    queue = LocalJobQueue(config, hang_seconds=settings.worker_hang_seconds)
    await queue.start()
    try:
        await queue.wait_ready()
        assert queue.worker_info is not None
        return queue.worker_info
    finally:
        await queue.close()


def models_command(args: argparse.Namespace, settings: Settings) -> int:
    specs = settings.model_specs()
    print("configured (STEPGRID_MODEL):")
    print("\n".join(configured_lines(specs)))
    print(f"built in, to try offline (random weights, --model NAME): {', '.join(TINY_MODELS)}")
    if args.no_load:
        return 0
    try:
        device, dtype = checked_hardware(args)
    except InvalidOption as error:  # or the worker would crash three times over it, with tracebacks
        print(f"stepgrid: {error}", file=sys.stderr)
        return 2
    settings = settings.model_copy(update={"device": device, "dtype": dtype})
    quiet_worker(args)
    try:
        ready = asyncio.run(load_models(settings, specs))
    except WorkerUnavailable as error:
        if str(error).startswith(SAFETY_CHECKER_FAILED):  # the models loaded; the bot would post no picture
            print(f"stepgrid: {error}", file=sys.stderr)
            return 2
        print(f"stepgrid: no model loaded: {error}", file=sys.stderr)
        return 2 if isinstance(error, ModelsUnavailable) else 1  # 2: the configured models are the problem
    limits = EffectiveLimits.combine(None, settings, models=specs)
    print(f"loaded on {ready.device} ({ready.dtype}) in {ready.load_seconds:.1f}s:")
    for model in ready.models:
        print("\n".join(loaded_lines(model, limits)))
    print(checker_line(ready.safety_checker, settings.safety_threshold))
    if ready.unavailable:
        print("unavailable:")
        for missing in ready.unavailable:
            print(f"  {missing.name}: {missing.message}")
    return 0

"""What the generating commands' arguments ask for: the request options (an input image read and its prompt
taken from it), the model chosen, the defaults the bot would use, and what can be refused before a model loads
(the output, the model folder, the device and dtype, what the model's configs rule out)."""

from __future__ import annotations

import argparse
import difflib
import io
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from bot.cli.outputs import check_writable, error_reason
from bot.config import Settings, checked_device, checked_dtype
from bot.errors import InvalidOption
from bot.job_requests import AUTO, RequestDefaults, RequestOptions, build_request, checked, requested_loras
from bot.limits.server import EffectiveLimits
from bot.pictures.input_image import prepare_input_image
from inference.model_info import ModelInfo
from inference.models.files import info_before_loading, local_source_problem
from inference.parameters import PNG_KEY
from inference.registry import TEST_MODEL_NAMES, ModelSpec, models_from_setting
from inference.requests import SIZE_MULTIPLE, InvalidRequest, Request
from inference.validation import validate_for_model

TINY_MODELS = TEST_MODEL_NAMES[:5]  # one per family; the rest are full-size random weights, for benchmarks


def read_input_image(args: argparse.Namespace) -> bytes | None:
    """The bytes of `--image` (or upscale's image); InvalidOption when it can't be read."""
    path: Path | None = getattr(args, "image", None)
    if path is None:
        return None
    try:
        return path.expanduser().read_bytes()
    except OSError as error:
        raise InvalidOption(f"{path}: {error_reason(error)}") from None


def prompt_of(image: bytes) -> str:
    """The prompt in an image's A1111 `parameters` (Stepgrid's and A1111's own images carry one), or ""."""
    try:
        with Image.open(io.BytesIO(image)) as opened:
            text = opened.info.get(PNG_KEY, "")
    except Exception:
        return ""
    return text.split("\n", 1)[0].strip() if isinstance(text, str) else ""


def options_from_args(args: argparse.Namespace, multiple: int = SIZE_MULTIPLE) -> RequestOptions:
    """What the arguments ask for, options left out as None (the model's defaults fill them in). An
    input image is checked and normalised for a model whose sizes are multiples of `multiple`."""
    grid = args.command == "compare-steps"
    scheduler_grid = args.command == "compare-schedulers"
    guidance_grid = args.command == "compare-guidance"
    upscale = args.command == "upscale"
    strength_grid = args.command == "compare-strength"
    steps_grid = grid or scheduler_grid or strength_grid or guidance_grid  # --steps is a list of step counts
    data = read_input_image(args)
    image, size, prompt = None, getattr(args, "size", None), args.prompt
    if data is not None:
        prepared = prepare_input_image(data, multiple=multiple)
        image, size = prepared.png, size or f"{prepared.width}x{prepared.height}"
        if prompt is None:
            prompt = prompt_of(data)
            if not prompt:
                raise InvalidOption(f"{args.image} carries no prompt in its parameters: give one with --prompt.")
    return RequestOptions(
        prompt=prompt,
        negative_prompt=args.negative,
        scheduler=None if scheduler_grid else args.scheduler,
        seed=None if args.seed == -1 else args.seed,
        guidance=None if guidance_grid else args.guidance,
        size=size,
        steps=None if steps_grid or args.steps == AUTO else args.steps,
        count=None if steps_grid or upscale else args.count,
        compare_steps=args.steps if steps_grid else None,
        grid=grid,
        film=getattr(args, "film", None) is not None,
        schedulers=args.schedulers if scheduler_grid else None,
        scheduler_grid=scheduler_grid,
        guidances=args.guidance if guidance_grid else None,
        guidance_grid=guidance_grid,
        stop_early=getattr(args, "stop_early", False) is True,
        image=image,
        strength=getattr(args, "strength", None),
        upscale=upscale,
        strengths=getattr(args, "strengths", None),
        strength_grid=strength_grid,
        lora=getattr(args, "lora", None),
        lora_weight=getattr(args, "lora_weight", None),
        lora_compare=getattr(args, "lora_compare", False),
        auto_steps=not steps_grid and args.steps == AUTO,
        seeds=getattr(args, "seeds", None),
    )


def request_from_args(args: argparse.Namespace, defaults: RequestDefaults | None = None) -> Request:
    """Build and check the request with the commands' builder; raises InvalidOption with a one-line reason.

    Before the model is loaded (`defaults` None) this checks what can be checked without it.
    """
    return checked(build_request(options_from_args(args), defaults or RequestDefaults()))


def cli_defaults(
    settings: Settings, specs: Sequence[ModelSpec], model: ModelInfo, loras: Sequence[str] = ()
) -> RequestDefaults:
    """The defaults the bot would use for `model` (and the prompt's `<lora:…>` LoRAs), from the same place
    (the operator's limits, no server)."""
    return EffectiveLimits.combine(None, settings, models=specs).request_defaults(model, loras)


def check_before_loading(args: argparse.Namespace, settings: Settings, specs: Sequence[ModelSpec]) -> None:
    """Refuse what the model can't do where its folder's configs tell that without loading a weight (minutes for
    a real model): the request built with the model's own defaults and checked as the worker will check it.
    Options naming LoRAs wait for the load (what a LoRA allows is known once it is loaded)."""
    model = info_before_loading(specs[0], settings.model_cache_dir) if specs else None
    if model is None:
        return
    options = options_from_args(args, model.size_multiple)
    if requested_loras(options)[1]:
        return
    request = checked(build_request(options, cli_defaults(settings, specs, model)))
    try:
        validate_for_model(request, model)
    except InvalidRequest as error:
        raise InvalidOption(str(error)) from None


def select_models(choice: str | None, settings: Settings) -> tuple[ModelSpec, ...]:
    """The model `--model` names: a name in the configured registry (STEPGRID_MODEL), else a hub id,
    local folder, registry file or test model. Left out: the configured default. Raises
    InvalidOption for a bare name that is none of these (a typo in a registry name)."""
    configured = settings.model_specs()
    if choice is None:
        return configured[:1]
    by_name = {spec.name: spec for spec in configured}
    if choice in by_name:
        return (by_name[choice],)
    path = Path(choice).expanduser()
    bare_name = not any(mark in choice for mark in ("/", "\\", "[", "=")) and not choice.startswith((".", "~"))
    if bare_name and choice not in TEST_MODEL_NAMES and not path.exists() and not choice.endswith(".toml"):
        close = difflib.get_close_matches(choice, [*by_name, *TEST_MODEL_NAMES], n=1, cutoff=0.75)
        suggestion = f" (did you mean {close[0]!r}?)" if close else ""
        raise InvalidOption(
            f"--model {choice}: no such model{suggestion}; choose one of the configured models ({', '.join(by_name)}), "
            f"a hub id like owner/name, a local folder, or a test model ({', '.join(TINY_MODELS)})."
        )
    return models_from_setting(choice)[:1]


def check_output_and_model(args: argparse.Namespace) -> None:
    """Refuse, before loading anything, an output that can't be written or a model folder that isn't there."""
    output: Path = args.output
    if output.is_dir():
        raise InvalidOption(f"-o {output} is a folder; give a file name like {output / 'image.png'}.")
    if output.suffix.lower() != ".png":
        raise InvalidOption(f"-o {output}: Stepgrid writes PNG files; give a name ending in .png.")
    check_writable(output)
    film: Path | None = getattr(args, "film", None)
    if film is not None:
        if film.suffix.lower() not in (".webp", ".gif"):
            raise InvalidOption(f"--film {film}: the film is an animation; give a name ending in .webp or .gif.")
        check_writable(film, "--film")
    if args.model is None:
        return
    model = Path(args.model).expanduser()
    looks_like_path = (args.model.startswith((".", "/", "~")) or model.exists()) and model.suffix != ".toml"
    if not looks_like_path:
        return
    if not model.exists():
        raise InvalidOption(f"--model {args.model} does not exist.")
    if (problem := local_source_problem(model, repr(args.model))) is not None:  # as the worker would say it
        raise InvalidOption(problem)


def checked_hardware(args: argparse.Namespace) -> tuple[str, str]:
    """--device and --dtype as the worker needs them, checked before any model loads."""
    try:
        device = checked_device(args.device)
    except ValueError as error:
        raise InvalidOption(f"--device {error}.") from None
    try:
        dtype = checked_dtype(args.dtype)
    except ValueError as error:
        raise InvalidOption(f"--dtype {error}.") from None
    return device, dtype

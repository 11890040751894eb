"""Validation of the wire types: the one check of a request, so the bot can refuse a bad one before it is
queued and the worker can trust what it receives (`validate`), and the checks that need the model it
runs on (`validate_for_model`). Standard library only, as `inference.requests`. Parsing what users type
(sizes, step lists, scheduler names) is the bot's (`bot.job_requests`).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Hashable, Sequence
from typing import TypeVar

from inference import model_info, requests


def validate(request: requests.Request, *, max_size: int = requests.MAX_SIZE) -> None:
    """Raise InvalidRequest naming the first bad value and the allowed range.

    `max_size` is the largest side the caller allows (a server's max image size), named in the size range.
    """
    if not request.prompt.strip():
        raise requests.InvalidRequest("The prompt is empty: describe the image you want.")
    if isinstance(request, requests.CompareStepsRequest):
        _validate_seed_rows(request)  # before anything counts the lanes a bad count would make
    for scheduler in dict.fromkeys(request.lane_schedulers):
        if scheduler not in requests.SCHEDULER_NAMES:
            raise requests.InvalidRequest(
                f"Unknown scheduler {scheduler!r}{_did_you_mean(scheduler)}; "
                f"choose one of: {', '.join(requests.SCHEDULER_NAMES)}."
            )
    if isinstance(request, requests.CompareStrengthRequest):
        _validate_strength_grid(request)
    elif isinstance(request, requests.CompareStepsRequest | requests.CompareSchedulersRequest):
        _validate_grid(request)
    elif isinstance(request, requests.CompareGuidanceRequest):
        _validate_guidance_grid(request)
    else:
        if not requests.MIN_COUNT <= request.count <= requests.MAX_COUNT:
            raise requests.InvalidRequest(
                f"count must be {requests.MIN_COUNT} to {requests.MAX_COUNT}; got {request.count}."
            )
        if request.film and request.count != 1:
            raise requests.InvalidRequest(f"A steps film follows one image: set count to 1; got {request.count}.")
        if request.auto_steps:
            _validate_auto_steps(request)
    for steps in request.lane_steps:
        if not requests.MIN_STEPS <= steps <= requests.MAX_STEPS:
            raise requests.InvalidRequest(f"steps must be {requests.MIN_STEPS} to {requests.MAX_STEPS}; got {steps}.")
    for guidance in requests.guidance_values(request):
        if not (math.isfinite(guidance) and requests.MIN_GUIDANCE <= guidance <= requests.MAX_GUIDANCE):
            raise requests.InvalidRequest(
                f"guidance must be {requests.MIN_GUIDANCE:g} to {requests.MAX_GUIDANCE:g}; got {guidance:g}."
            )
    for name, value in (("width", request.width), ("height", request.height)):
        if not requests.MIN_SIZE <= value <= min(max_size, requests.MAX_SIZE) or value % requests.SIZE_MULTIPLE:
            raise requests.InvalidRequest(
                f"{name} must be a multiple of {requests.SIZE_MULTIPLE} from {requests.MIN_SIZE} to "
                f"{min(max_size, requests.MAX_SIZE)}; "
                f"got {value}."
            )
    if request.width * request.height > requests.MAX_PIXELS:
        raise requests.InvalidRequest(
            f"{request.width}x{request.height} is too many pixels; "
            f"at most {requests.MAX_PIXELS:,} (e.g. 1536x1536 or 2048x1024)."
        )
    if not 0 <= request.seed <= requests.MAX_SEED:
        raise requests.InvalidRequest(f"seed must be 0 to {requests.MAX_SEED}; got {request.seed}.")
    _validate_loras(request.loras)
    if isinstance(request, requests.GenerateRequest) and request.hires is not None:
        _validate_hires(request, max_size)
    if requests.input_image(request) and not (isinstance(request, requests.GenerateRequest) and request.upscale_only):
        _validate_image_input(request)
    elif requests.input_image(request):
        _validate_image_bytes(requests.input_image(request))


def _validate_auto_steps(request: requests.GenerateRequest) -> None:
    if request.scheduler in requests.NEVER_SETTLE:
        raise requests.InvalidRequest(
            f"steps: auto stops when the image settles, and {request.scheduler} adds fresh noise at every step, "
            "so it never does: choose a scheduler such as Euler or DPM++ 2M, or give a step count."
        )
    for what, present in (("an input image", bool(request.image)), ("a hires pass", request.hires is not None),
                          ("a steps film", request.film)):  # fmt: skip
        if present:
            raise requests.InvalidRequest(
                f"steps: auto is for text-to-image runs: leave out {what}, or give a step count."
            )


def _validate_loras(loras: tuple[tuple[str, float], ...]) -> None:
    if len(loras) > requests.MAX_LORAS:
        raise requests.InvalidRequest(f"At most {requests.MAX_LORAS} LoRAs at once; got {len(loras)}: leave some out.")
    for name, weight in loras:
        if not isinstance(name, str) or not name.strip():
            raise requests.InvalidRequest("A LoRA needs a name: write it like <lora:name:0.8>.")
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight):
            raise requests.InvalidRequest(f"The weight of the LoRA {name!r} must be a number; got {weight!r}.")
        if not requests.MIN_LORA_WEIGHT <= weight <= requests.MAX_LORA_WEIGHT:
            raise requests.InvalidRequest(
                f"The weight of the LoRA {name!r} must be {requests.MIN_LORA_WEIGHT:g} to "
                f"{requests.MAX_LORA_WEIGHT:g}; got {weight:g}."
            )
    if (twice := _repeated([name for name, _ in loras])) is not None:
        raise requests.InvalidRequest(f"The LoRA {twice!r} is given twice; give each LoRA once, with one weight.")


def _validate_hires(request: requests.GenerateRequest, max_size: int) -> None:
    hires = request.hires
    assert hires is not None
    if request.film:
        raise requests.InvalidRequest("A steps film follows one pass: leave out the hires pass, or the film.")
    if hires.upscaler not in requests.HIRES_UPSCALERS:
        raise requests.InvalidRequest(
            f"Unknown upscaler {hires.upscaler!r}; choose one of: {', '.join(requests.HIRES_UPSCALERS)}."
        )
    if hires.scale != requests.HIRES_SCALE:
        raise requests.InvalidRequest(f"The hires pass upscales x{requests.HIRES_SCALE}; got x{hires.scale}.")
    if not requests.MIN_STEPS <= hires.steps <= requests.MAX_STEPS:
        raise requests.InvalidRequest(
            f"hires steps must be {requests.MIN_STEPS} to {requests.MAX_STEPS}; got {hires.steps}."
        )
    if not (math.isfinite(hires.strength) and 0 < hires.strength <= requests.MAX_STRENGTH):
        raise requests.InvalidRequest(
            f"hires strength must be above 0, at most {requests.MAX_STRENGTH:g}; got {hires.strength:g}."
        )
    if requests.img2img_steps(hires.steps, hires.strength, flow=True) < 1:
        raise requests.InvalidRequest(
            f"At hires strength {hires.strength:g}, {hires.steps} steps run no step; raise either."
        )
    width, height = request.output_size
    if max(width, height) > min(max_size, requests.MAX_SIZE) or width * height > requests.MAX_PIXELS:
        raise requests.InvalidRequest(
            f"Upscaled x{hires.scale}, {request.width}x{request.height} would be {width}x{height}: more than "
            f"{min(max_size, requests.MAX_SIZE)} a side or {requests.MAX_PIXELS:,} pixels; start from a smaller image."
        )


def _validate_image_bytes(image: bytes) -> None:
    if len(image) > requests.MAX_INPUT_IMAGE_BYTES:
        raise requests.InvalidRequest(
            f"The input image is {len(image) / 1e6:.1f} MB; at most {requests.MAX_INPUT_IMAGE_BYTES / 1e6:.0f} MB."
        )
    if not image.startswith(b"\x89PNG\r\n\x1a\n"):
        raise requests.InvalidRequest("The input image must be a PNG.")


def _validate_image_input(request: requests.Request) -> None:
    for strength in dict.fromkeys(requests.lane_strengths(request)):
        if not (math.isfinite(strength) and requests.MIN_STRENGTH <= strength <= requests.MAX_STRENGTH):
            raise requests.InvalidRequest(
                f"strength must be {requests.MIN_STRENGTH:g} to {requests.MAX_STRENGTH:g}; got {strength:g}."
            )
    _validate_image_bytes(requests.input_image(request))
    if isinstance(request, requests.GenerateRequest) and request.film:
        raise requests.InvalidRequest("A steps film starts from noise: leave out the input image, or the film.")
    # The bigger of the two families' counts: the model's own check is `validate_for_model`'s.
    if (weakest := _weakest_lane(request, flow=True)) is not None:
        raise requests.InvalidRequest(_too_weak(*weakest))


def _weakest_lane(request: requests.Request, *, flow: bool) -> tuple[int, float] | None:
    """(steps, strength) of the first lane that would run no step over its input image, or None."""
    for steps, strength in zip(request.lane_steps, requests.lane_strengths(request), strict=True):
        if requests.img2img_steps(steps, strength, flow=flow) < 1:
            return steps, strength
    return None


def _too_weak(steps: int, strength: float) -> str:
    return (
        f"At strength {strength:g}, {steps} steps run no step over the image; raise the strength "
        f"or the steps (strength × steps must reach 1)."
    )


def _did_you_mean(scheduler: str) -> str:
    """ " (did you mean 'Euler'?)" for a typo of a scheduler's name, else ""."""
    names = {name.casefold(): name for name in requests.SCHEDULER_NAMES}
    close = difflib.get_close_matches(scheduler.strip().casefold(), names, n=1, cutoff=0.6)
    return f" (did you mean {names[close[0]]!r}?)" if close else ""


H = TypeVar("H", bound=Hashable)


def _repeated(items: Sequence[H]) -> H | None:
    """The first item that appears twice, or None."""
    seen: set[H] = set()
    for item in items:
        if item in seen:
            return item
        seen.add(item)
    return None


def _validate_grid(request: requests.GridRequest) -> None:
    columns = len(request.steps)
    if isinstance(request, requests.CompareStepsRequest) and request.stop_early and request.image:
        raise requests.InvalidRequest("stop early follows runs from noise: leave out the image, or stop early.")
    if (
        isinstance(request, requests.CompareStepsRequest)
        and not requests.MIN_COMPARE_CELLS <= columns <= requests.MAX_COMPARE_CELLS
    ):
        raise requests.InvalidRequest(
            f"A comparison needs {requests.MIN_COMPARE_CELLS} to {requests.MAX_COMPARE_CELLS} step counts; "
            f"got {columns}."
        )
    if isinstance(request, requests.CompareSchedulersRequest):
        rows = len(request.schedulers)
        if not requests.MIN_GRID_SCHEDULERS <= rows <= requests.MAX_GRID_SCHEDULERS:
            raise requests.InvalidRequest(
                f"A scheduler comparison needs {requests.MIN_GRID_SCHEDULERS} to "
                f"{requests.MAX_GRID_SCHEDULERS} schedulers; got {rows}."
            )
        if (twice := _repeated(request.schedulers)) is not None:
            raise requests.InvalidRequest(f"{twice} is in the list twice; give each scheduler once.")
        if columns < requests.MIN_COMPARE_CELLS:
            raise requests.InvalidRequest(
                f"A scheduler comparison needs at least {requests.MIN_COMPARE_CELLS} step counts; got {columns}."
            )
        _refuse_too_many_cells(len(request.lane_steps), grid_shape(request))
    _refuse_repeated_steps(request.steps)
    if isinstance(request, requests.CompareStepsRequest) and request.without_loras is not None:
        _validate_lora_comparison(request)


def _validate_seed_rows(request: requests.CompareStepsRequest) -> None:
    """`seeds`: 1 (one row), or 2 to 6 rows that fit the cell limit, with no other rows added."""
    seeds = request.seeds
    whole = isinstance(seeds, int) and not isinstance(seeds, bool)
    if not whole or not (seeds == 1 or requests.MIN_COMPARE_SEEDS <= seeds <= requests.MAX_COMPARE_SEEDS):
        raise requests.InvalidRequest(
            f"seeds must be {requests.MIN_COMPARE_SEEDS} to {requests.MAX_COMPARE_SEEDS} (a row per seed); "
            f"got {seeds!r}."
        )
    if seeds == 1:
        return
    if request.without_loras is not None:
        raise requests.InvalidRequest("Choose one of seeds and lora_compare: each draws rows of its own.")
    if request.stop_early:
        raise requests.InvalidRequest("Choose one of seeds and stop_early: each draws rows of its own.")
    columns = len(request.steps)
    _refuse_too_many_cells(seeds * columns, grid_shape(request))


def _validate_lora_comparison(request: requests.CompareStepsRequest) -> None:
    """Two rows, without and with the LoRAs: it needs a LoRA, and both rows must fit the cell limit."""
    if not request.loras:
        raise requests.InvalidRequest(
            "lora_compare needs a LoRA: choose one with lora, or write <lora:name:0.8> in the prompt."
        )
    columns, most = len(request.steps), requests.MAX_COMPARE_CELLS // 2
    if columns > most:
        raise requests.InvalidRequest(
            f"A LoRA comparison draws two rows (without and with the LoRA): at most {most} step counts, "
            f"{requests.MAX_COMPARE_CELLS} cells; got {columns} step counts."
        )
    guidance = request.without_loras.guidance if request.without_loras else request.guidance
    if not (math.isfinite(guidance) and requests.MIN_GUIDANCE <= guidance <= requests.MAX_GUIDANCE):
        raise requests.InvalidRequest(
            f"guidance must be {requests.MIN_GUIDANCE:g} to {requests.MAX_GUIDANCE:g}; got {guidance:g}."
        )


def _validate_strength_grid(request: requests.CompareStrengthRequest) -> None:
    if not request.image:
        raise requests.InvalidRequest("A strength comparison starts from an image: attach one.")
    columns, rows = len(request.strengths), len(request.steps)
    if not requests.MIN_GRID_STRENGTHS <= columns <= requests.MAX_GRID_STRENGTHS:
        raise requests.InvalidRequest(
            f"A strength comparison needs {requests.MIN_GRID_STRENGTHS} to {requests.MAX_GRID_STRENGTHS} "
            f"strengths; got {columns}."
        )
    if not 1 <= rows <= requests.MAX_GRID_STEP_ROWS:
        raise requests.InvalidRequest(
            f"A strength comparison takes 1 to {requests.MAX_GRID_STEP_ROWS} step counts; got {rows}."
        )
    _refuse_repeats(request.strengths, "Strength", "strength", request.steps)
    _refuse_too_many_cells(len(request.lane_steps), grid_shape(request))


def _validate_guidance_grid(request: requests.CompareGuidanceRequest) -> None:
    columns, rows = len(request.guidances), len(request.steps)
    if columns < requests.MIN_GRID_GUIDANCES:
        raise requests.InvalidRequest(
            f"A guidance comparison needs at least {requests.MIN_GRID_GUIDANCES} guidance values; got {columns}."
        )
    if not 1 <= rows <= requests.MAX_GUIDANCE_ROWS:
        raise requests.InvalidRequest(
            f"A guidance comparison has 1 to {requests.MAX_GUIDANCE_ROWS} step counts (rows); got {rows}."
        )
    _refuse_repeats(request.guidances, "Guidance", "value", request.steps)
    _refuse_too_many_cells(columns * rows, grid_shape(request), either=False)


def _refuse_repeats(values: Sequence[float], name: str, each: str, steps: Sequence[int]) -> None:
    """A value grid's columns (strengths, guidance values) or its rows of step counts with an item given twice."""
    if (twice := _repeated(values)) is not None:
        raise requests.InvalidRequest(f"{name} {twice:g} is in the list twice; give each {each} once.")
    _refuse_repeated_steps(steps)


def _refuse_repeated_steps(steps: Sequence[int]) -> None:
    if (twice := _repeated(steps)) is not None:
        raise requests.InvalidRequest(
            f"{twice} step{'' if twice == 1 else 's'} is in the list twice; give each step count once."
        )


def grid_shape(request: requests.Request) -> str:
    """What a comparison grid's cells are made of, in words: "3 schedulers × 5 step counts", "5 seeds × 3 step
    counts", "two rows, without and with the LoRA, × 4 step counts"; "" for a row of step counts or one image."""
    if isinstance(request, requests.GenerateRequest):
        return ""
    steps = f"{len(request.steps)} step counts"
    if isinstance(request, requests.CompareSchedulersRequest):
        return f"{len(request.schedulers)} schedulers × {steps}"
    if isinstance(request, requests.CompareStrengthRequest):
        return f"{len(request.strengths)} strengths × {steps}"
    if isinstance(request, requests.CompareGuidanceRequest):
        values = f"{len(request.guidances)} guidance values"
        return f"{values} × {steps}" if len(request.steps) > 1 else values
    if isinstance(request, requests.CompareStepsRequest) and request.without_loras is not None:
        return f"two rows, without and with the LoRA, × {steps}"
    if isinstance(request, requests.CompareStepsRequest) and request.seeds > 1:
        return f"{request.seeds} seeds × {steps}"
    return ""


def _refuse_too_many_cells(cells: int, shape: str, *, either: bool = True) -> None:
    """`shape`: what the cells are made of, "3 seeds × 5 step counts"."""
    if cells > requests.MAX_COMPARE_CELLS:
        raise requests.InvalidRequest(
            f"A comparison grid has at most {requests.MAX_COMPARE_CELLS} cells; {shape} would be {cells}: "
            f"give fewer{' of either' if either else ''}."
        )


def ignores_guidance(model: model_info.ModelInfo, loras: Sequence[tuple[str, float]] = ()) -> str:
    """Why guidance can't change this model's image, in words ("" when it can): distilled without it
    (FLUX.1-schnell), or a few-step distill that runs with classifier-free guidance off (Turbo at 0,
    LCM-LoRA and Lightning at 1, a few-step LoRA), where a higher value only overcooks the image."""
    if model.guidance_mode == model_info.GUIDANCE_IGNORED:
        return (
            f"The model {model.name} ({model.family}) is distilled without guidance: every value gives the same image"
        )
    few_step = model.few_step_lora(loras) if loras else None
    default = few_step.default_guidance if few_step and few_step.default_guidance is not None else None
    default = model.default_guidance if default is None else default
    if model.guidance_mode == model_info.GUIDANCE_CFG and default <= 1:
        what = f"The LoRA {few_step.name}" if few_step else f"The model {model.name}"
        return (
            f"{what} is a few-step distill that runs "
            f"without guidance (at {default:g}): the values at or below 1 give the same image and higher ones only "
            "overcook it"
        )
    return ""


def _validate_guidance_grid_for_model(request: requests.CompareGuidanceRequest, model: model_info.ModelInfo) -> None:
    why = ignores_guidance(model, request.loras)
    if why:
        raise requests.InvalidRequest(f"{why}; compare steps or schedulers instead.")
    if model.guidance_mode == model_info.GUIDANCE_CFG:
        off = [value for value in request.guidances if value <= 1]
        if len(off) > 1:
            raise requests.InvalidRequest(
                f"Guidance {' and '.join(f'{value:g}' for value in off)} run without classifier-free guidance "
                "(1 or below turns it off), so their cells would be the same image; keep one of them."
            )


def validate_for_model(request: requests.Request, model: model_info.ModelInfo) -> None:
    """Raise InvalidRequest if the request is fine in general but not for this model (each row of a LoRA
    comparison: the row without the LoRAs is named in the refusal)."""
    rows = requests.row_requests(request)
    if len(rows) > 1:
        names = ", ".join(name for name, _ in request.loras)
        try:
            _validate_row_for_model(rows[0], model)
        except requests.InvalidRequest as error:
            raise requests.InvalidRequest(f"Without {names} (the comparison's first row): {error}") from None
    _validate_row_for_model(rows[-1], model)


def _validate_row_for_model(request: requests.Request, model: model_info.ModelInfo) -> None:
    for name, _ in request.loras:
        model.lora(name)  # an unknown one is refused by name, with the close ones
    if isinstance(request, requests.CompareGuidanceRequest):
        _validate_guidance_grid_for_model(request, model)
    schedulers = model.schedulers_with(request.loras)
    for scheduler in dict.fromkeys(request.lane_schedulers):
        if scheduler not in schedulers:
            why = (
                f" (it is for {scheduler} and other few-step distills)"
                if scheduler in requests.FEW_STEP_SCHEDULERS
                else ""
            )
            raise requests.InvalidRequest(
                f"The model {model.name} can't run the scheduler {scheduler!r}{why}; "
                f"choose one of: {', '.join(schedulers)}."
            )
    for name, value in (("width", request.width), ("height", request.height)):
        if value % model.size_multiple:
            raise requests.InvalidRequest(
                f"{name} must be a multiple of {model.size_multiple} for the model {model.name}; got {value}."
            )
    if request.negative_prompt.strip():
        if model.guidance_mode != model_info.GUIDANCE_CFG:
            raise requests.InvalidRequest(
                f"The model {model.name} ({model.family}) doesn't use a negative prompt; leave it out."
            )
        if max(requests.guidance_values(request)) <= 1:
            raise requests.InvalidRequest(
                f"A negative prompt takes effect only with guidance above 1; got guidance {request.guidance:g} "
                f"with the model {model.name}: leave the negative prompt out or raise guidance."
            )
    if model.guidance_mode == model_info.GUIDANCE_IGNORED and request.guidance != model.default_guidance:
        raise requests.InvalidRequest(
            f"The model {model.name} ({model.family}) ignores guidance; leave it out (got {request.guidance:g})."
        )
    upscale = isinstance(request, requests.GenerateRequest) and request.upscale_only
    weakest = (
        _weakest_lane(request, flow=model.family in requests.FLOW_FAMILIES) if requests.input_image(request) else None
    )
    if weakest is not None and not upscale:
        raise requests.InvalidRequest(_too_weak(*weakest))
    if model.max_steps is not None and max(request.lane_steps) > model.max_steps:
        raise requests.InvalidRequest(
            f"steps must be at most {model.max_steps} for the model {model.name}; got {max(request.lane_steps)}."
        )


def parse_step_list(text: str) -> tuple[int, ...]:
    """Parse "5,10,20" (or with spaces or semicolons between) into step counts; the error shows the expected form.

    The one user-input parser left here: benchmarks/bench_engine.py reads its step lists with it.
    The bot's parsers are in `bot.job_requests`, which uses this one.
    """
    parts = [part.strip() for part in text.replace(" ", ",").replace(";", ",").split(",") if part.strip()]
    try:
        steps = tuple(int(part) for part in parts)
    except ValueError:
        raise requests.InvalidRequest(
            f"Could not read step counts {text!r}: write whole numbers separated by commas, like 5,10,20,30."
        ) from None
    if not steps:
        raise requests.InvalidRequest("No step counts given: write them like 5,10,20,30.")
    return steps

"""Building requests from what people type: command options, CLI arguments, and a result's buttons.

The bot's user-input parsers live here (sizes, scheduler names; the step-list parser stays in the
wire protocol while benchmarks/bench_engine.py reads its arguments with it), with the defaults for
options left out and the one translation of `InvalidRequest` into the error a user sees.
"""

from __future__ import annotations

import dataclasses
import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from bot.errors import InvalidOption
from inference.clipping import MAX_ECHO, clip, echo
from inference.requests import (
    DEFAULT_COMPARE_GUIDANCE,
    DEFAULT_COMPARE_STEPS,
    DEFAULT_COMPARE_STRENGTHS,
    DEFAULT_GRID_SCHEDULERS,
    DEFAULT_HIRES_STRENGTH,
    DEFAULT_SCHEDULER,
    DEFAULT_STRENGTH,
    DISTILLED_COMPARE_GUIDANCE,
    MAX_COMPARE_CELLS,
    MAX_SEED,
    MAX_SIZE,
    MAX_STEPS,
    MIN_COMPARE_CELLS,
    MIN_STEPS,
    SCHEDULER_NAMES,
    CompareGuidanceRequest,
    CompareSchedulersRequest,
    CompareStepsRequest,
    CompareStrengthRequest,
    GenerateRequest,
    HiresFix,
    InvalidRequest,
    PlainRow,
    Request,
    lane_request,
    lane_strengths,
    recast,
)
from inference.validation import parse_step_list, validate

# The longest prompt (and negative prompt) the commands accept.
MAX_PROMPT_CHARS = 1500
# Longer than any list of step counts the commands accept (12 numbers up to 150, with spaces).
MAX_STEP_LIST_CHARS = 100
MAX_SIZE_CHARS = 20
MAX_SCHEDULER_LIST_CHARS = 200
MAX_STRENGTH_LIST_CHARS = 60  # six strengths like 0.35 with spaces
MAX_GUIDANCE_LIST_CHARS = 100

# Steps a user is likely to want next; "fewer"/"more" move one rung along this ladder.
STEP_LADDER = (1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 60, 75, 100, 125, 150)

T = TypeVar("T")

AUTO = "auto"  # what people type for `steps: auto` (the CLI's `--steps auto`)


@dataclass(frozen=True)
class RowDefaults:
    """A LoRA comparison's row without the LoRA: the model's own scheduler, guidance and ladder."""

    scheduler: str = DEFAULT_SCHEDULER
    guidance: float = GenerateRequest.guidance
    compare_steps: tuple[int, ...] = DEFAULT_COMPARE_STEPS


@dataclass(frozen=True)
class RequestDefaults:
    """Values used for options the user left out.

    Made in one place, `EffectiveLimits.request_defaults`: the chosen model's own defaults unless
    the server (or the operator) set its own; the wire types' defaults when no model is known.
    """

    steps: int = GenerateRequest.steps
    scheduler: str = DEFAULT_SCHEDULER
    guidance: float = GenerateRequest.guidance
    width: int = GenerateRequest.width
    height: int = GenerateRequest.height
    compare_steps: tuple[int, ...] = DEFAULT_COMPARE_STEPS
    grid_schedulers: tuple[str, ...] = DEFAULT_GRID_SCHEDULERS  # /compare-schedulers rows
    max_grid_cells: int = MAX_COMPARE_CELLS  # a default scheduler grid's ladder is trimmed to fit
    model: str = ""  # the model these defaults are for ("" = the worker's default)
    lora_weights: tuple[tuple[str, float], ...] = ()  # the model's LoRAs and their default weights
    strength: float = DEFAULT_STRENGTH  # img2img: how much of the schedule runs over the input image
    hires_strength: float = DEFAULT_HIRES_STRENGTH
    # Without the LoRAs these defaults are for (a few-step LoRA switches them): None, the same.
    without_loras: RowDefaults | None = None


# --- parsing what people type ------------------------------------------------------------------


def find_scheduler(name: str) -> str | None:
    """The scheduler's proper name for any capitalisation ("euler a" -> "Euler a"), or None."""
    wanted = name.strip().casefold()
    return next((known for known in SCHEDULER_NAMES if known.casefold() == wanted), None)


def _scheduler_as_typed(name: str) -> str:
    """The scheduler's proper name; an unknown one is left as typed (clipped: the refusal quotes it) for
    validate() to refuse, listing the schedulers."""
    return find_scheduler(name) or clip(name, MAX_ECHO)


def resolve_scheduler_list(text: str | None, default: tuple[str, ...]) -> tuple[str, ...]:
    """Scheduler names from "Euler a, DDIM" or "Euler a; DDIM" (any capitalisation; an unknown one is
    left for validate() to refuse with the list), or the default rows when left out."""
    if text is None or not text.strip():
        return default
    if len(text) > MAX_SCHEDULER_LIST_CHARS:
        raise InvalidOption(f"Could not read schedulers {echo(text)}: write a few names like Euler a, DDIM, UniPC.")
    return tuple(_scheduler_as_typed(name.strip()) for name in re.split("[,;]", text) if name.strip())


def spread(ladder: tuple[T, ...], count: int) -> tuple[T, ...]:
    """`count` rungs of the ladder spread from its first to its last (all of it if it is that short)."""
    if len(ladder) <= count:
        return ladder
    if count < 2:
        return ladder[:count]
    return tuple(ladder[round(i * (len(ladder) - 1) / (count - 1))] for i in range(count))


def parse_size(text: str) -> tuple[int, int]:
    """Parse "512" or "768x512" (width x height)."""
    if len(text) > MAX_SIZE_CHARS:  # "1024x1024" is 9 characters; don't turn thousands of digits into a number
        raise InvalidRequest(f"Could not read size {echo(text)}: write it like 512 or 768x512.")
    parts = text.lower().replace("×", "x").split("x")
    try:
        numbers = [int(part) for part in parts]
    except ValueError:
        raise InvalidRequest(f"Could not read size {echo(text)}: write it like 512 or 768x512.") from None
    if len(numbers) == 1:
        return numbers[0], numbers[0]
    if len(numbers) == 2:
        return numbers[0], numbers[1]
    raise InvalidRequest(f"Could not read size {echo(text)}: write it like 512 or 768x512.")


def as_option_error(parse: Callable[[], T]) -> T:
    """Run `parse`; an InvalidRequest becomes the InvalidOption a user is shown (the one translation)."""
    try:
        return parse()
    except InvalidRequest as error:
        raise InvalidOption(str(error)) from None


def checked(request: Request, *, max_size: int = MAX_SIZE) -> Request:
    """`request` if it is valid, else InvalidOption naming the first bad value and the allowed range
    (sizes up to `max_size`, the server's max image size)."""
    as_option_error(lambda: validate(request, max_size=max_size))
    return request


def resolve_size(text: str | None, defaults: RequestDefaults) -> tuple[int, int]:
    """(width, height) from a size option like "512" or "768x512", or the defaults."""
    if text is None or not text.strip():
        return defaults.width, defaults.height
    return as_option_error(lambda: parse_size(text.strip()))


def resolve_step_list(text: str | None, default: tuple[int, ...] = DEFAULT_COMPARE_STEPS) -> tuple[int, ...]:
    """Step counts from "5,10,20" in ascending order (the grid's columns and their Δ follow it, whatever
    order they were typed in); the default comparison (the model's ladder) when left out."""
    if text is None or not text.strip():
        return default
    if len(text) > MAX_STEP_LIST_CHARS:  # no list of at most 12 step counts is this long; don't echo it whole
        raise InvalidOption(f"Could not read step counts {echo(text)}: write 2 to 12 whole numbers like 5,10,20,30.")
    return tuple(sorted(as_option_error(lambda: parse_step_list(text))))


def read_numbers(text: str, what: str, hint: str, max_chars: int) -> tuple[float, ...]:
    """Numbers from "0.3, 0.6; 0.9" (commas, semicolons or spaces between), in ascending order; one line
    naming `what` and saying `hint` when they can't be read."""
    parts = [part for part in re.split("[,; ]", text) if part.strip()] if len(text) <= max_chars else ["?"]
    try:
        values = tuple(float(part) for part in parts)
    except ValueError:
        values = ()
    if not values or not all(math.isfinite(value) for value in values):
        raise InvalidOption(f"Could not read {what} {echo(text)}: {hint}.")
    return tuple(sorted(values))


def resolve_strength_list(
    text: str | None, default: tuple[float, ...] = DEFAULT_COMPARE_STRENGTHS
) -> tuple[float, ...]:
    """Strengths from "0.3, 0.6, 0.9" in ascending order (the grid's columns), or the default when left out."""
    if text is None or not text.strip():
        return default
    return read_numbers(text, "strengths", "write 2 to 6 numbers from 0 to 1 like 0.3,0.6,0.9", MAX_STRENGTH_LIST_CHARS)


def parse_guidance_list(text: str) -> tuple[float, ...]:
    """Guidance values from "1, 3.5, 7" (commas, spaces or semicolons between), in ascending order."""
    hint = "write numbers separated by commas, like 1, 3, 5, 7.5"
    return read_numbers(text, "guidance values", hint, MAX_GUIDANCE_LIST_CHARS)


def guidance_ladder(default: float, cells: int) -> tuple[float, ...]:
    """A guidance grid's default columns for a model whose own guidance is `default`: classifier-free
    guidance from off to strong, or around a distilled guidance (FLUX-dev's 3.5), the model's own value
    among them, spread to at most `cells` columns."""
    ladder = DISTILLED_COMPARE_GUIDANCE if 1 < default < 5 else DEFAULT_COMPARE_GUIDANCE
    chosen = list(spread(tuple(sorted({*ladder, default})), max(2, cells)))
    if default not in chosen:
        nearest = min(range(len(chosen)), key=lambda i: abs(chosen[i] - default))
        chosen[nearest] = default
    return tuple(sorted(set(chosen)))


def random_seed(rng: random.Random | None = None) -> int:
    """A fresh seed in the range the worker accepts."""
    return (rng or random.SystemRandom()).randint(0, MAX_SEED)


# --- the one request builder (slash commands and the CLI) -------------------------------------


@dataclass(frozen=True)
class RequestOptions:
    """What a member typed in a command (or the CLI's arguments); None where an option was left out.

    `grid` asks for a comparison grid of `compare_steps`; `scheduler_grid` for one of `schedulers`
    (rows) × `compare_steps` (columns); else `count` images of `steps` steps.
    """

    prompt: str
    negative_prompt: str | None = None
    scheduler: str | None = None
    seed: int | None = None
    guidance: float | None = None
    size: str | None = None
    steps: int | None = None
    count: int | None = None
    compare_steps: str | None = None
    grid: bool = False
    model: str | None = None
    film: bool = False
    schedulers: str | None = None
    scheduler_grid: bool = False
    guidances: str | None = None  # a guidance grid's columns ("1, 3, 7.5")
    guidance_grid: bool = False  # `guidances` (columns) × `compare_steps` (rows, default: `steps`)
    stop_early: bool = False  # a steps grid also shows its longest run stopped at each step count
    lora: str | None = None
    lora_weight: float | None = None
    image: bytes | None = None  # the input image, checked and normalised (bot.pictures.input_image)
    strength: float | None = None
    upscale: bool = False  # Upscale x2 the input image: a hires pass of `steps` at `strength`
    # A strength grid over the input image: `strengths` (columns) × `compare_steps` (rows, default the model's steps).
    strengths: str | None = None
    strength_grid: bool = False
    lora_compare: bool = False  # with `grid`: a row without the LoRA above the row with it
    # `steps: auto`: stop when the image settles, at most `steps` (left out: the model's longest ladder count).
    auto_steps: bool = False
    seeds: int | None = None  # with `grid`: the ladder once per seed, a row each (the sweet spot over seeds)


_TEXT_OPTIONS = (
    "prompt", "negative_prompt", "scheduler", "size", "compare_steps", "schedulers", "lora", "strengths", "guidances",
)  # fmt: skip
_WHOLE_OPTIONS = ("seed", "steps", "count", "seeds")


def typed(options: RequestOptions) -> RequestOptions:
    """`options` if every value has its option's type; InvalidOption naming the first that hasn't.

    Discord sends each option with the type the command declares, but discord.py passes on whatever
    a client sent: a crafted one can send text for a number.
    """
    for name in _TEXT_OPTIONS:
        value = getattr(options, name)
        if value is not None and not isinstance(value, str):
            raise InvalidOption(f"{name.replace('_', ' ')} must be text; got {echo(value)}.")
    for name in _WHOLE_OPTIONS:
        value = getattr(options, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise InvalidOption(f"{name} must be a whole number; got {echo(value)}.")
    for name in ("guidance", "lora_weight", "strength"):
        value = getattr(options, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise InvalidOption(f"{name.replace('_', ' ')} must be a number; got {echo(value)}.")
    return options


# A1111's prompt syntax for a LoRA: <lora:name> or <lora:name:weight>.
LORA_TAG = re.compile(r"<lora:([^:>]*)(?::([^>]*))?>", re.IGNORECASE)


def requested_loras(options: RequestOptions) -> tuple[str, tuple[tuple[str, float | None], ...]]:
    """The prompt without its `<lora:name:weight>` tags, and the LoRAs asked for: the tags', then the
    `lora` option's (with `lora_weight`). A weight left out is None (the LoRA's default)."""
    options = typed(options)
    loras: list[tuple[str, float | None]] = []
    for match in LORA_TAG.finditer(options.prompt):
        name, weight = match.group(1).strip(), match.group(2)
        if not name:
            raise InvalidOption("A LoRA tag needs a name: write it like <lora:name:0.8>.")
        loras.append((name, _lora_weight(name, weight)))
    prompt = " ".join(LORA_TAG.sub(" ", options.prompt).split()) if loras else options.prompt
    if options.lora is not None and options.lora.strip():
        loras.append((options.lora.strip(), options.lora_weight))
    elif options.lora_weight is not None:
        raise InvalidOption("lora weight needs a lora: choose one, or leave the weight out.")
    return prompt, tuple(loras)


def _lora_weight(name: str, text: str | None) -> float | None:
    if text is None or not text.strip():
        return None
    try:
        weight = float(text)
    except ValueError:
        raise InvalidOption(
            f"Could not read the weight of the LoRA {clip(name, 40)!r} ({clip(text, 20)!r}): write it like "
            "<lora:name:0.8>."
        ) from None
    if not math.isfinite(weight):
        raise InvalidOption(f"The weight of the LoRA {clip(name, 40)!r} must be a number, like 0.8.")
    return weight


def build_request(options: RequestOptions, defaults: RequestDefaults) -> Request:
    """The request `options` ask for, with `defaults` and a random seed where left out.

    Raises InvalidOption for a size or step list it can't read; the values are checked once, by
    `checked` (JobService.start does it for the commands and buttons).
    """
    options = typed(options)
    prompt, asked = requested_loras(options)
    width, height = resolve_size(options.size, defaults)
    scheduler = options.scheduler
    fields = {
        "prompt": prompt.strip(),
        "negative_prompt": (options.negative_prompt or "").strip(),
        "scheduler": defaults.scheduler if scheduler is None else _scheduler_as_typed(scheduler),
        "seed": random_seed() if options.seed is None else options.seed,
        "guidance": defaults.guidance if options.guidance is None else options.guidance,
        "width": width,
        "height": height,
        # The defaults are made for the chosen model, under its proper name; without a known model
        # the name stays as typed and the queue checks it.
        "model": defaults.model or (options.model or "").strip(),
        "loras": _resolved_loras(asked, defaults),
    }
    if options.image:
        fields["image"] = options.image
        fields["strength"] = defaults.strength if options.strength is None else float(options.strength)
    if options.upscale:
        if not options.image:
            raise InvalidOption("Upscale needs an image to start from.")
        hires_strength = defaults.hires_strength if options.strength is None else float(options.strength)
        hires_steps = defaults.steps if options.steps is None else options.steps
        fields["strength"] = 1.0  # no first pass runs: the image is the first pass
        hires = HiresFix(steps=hires_steps, strength=hires_strength)
        return GenerateRequest(**fields, steps=hires_steps, hires=hires)  # type: ignore[arg-type]
    if options.strength_grid:
        return _strength_grid(options, fields, defaults)
    if options.grid and options.lora_compare:
        return _lora_comparison(options, fields, defaults)
    if options.lora_compare:
        raise InvalidOption("lora_compare is for /compare-steps: leave it out here.")
    if options.seeds is not None and not options.grid:
        raise InvalidOption("seeds is for /compare-steps: leave it out here.")
    if options.grid:
        return _steps_grid(options, fields, defaults)
    if options.guidance_grid:
        return _guidance_grid(options, fields, defaults)
    if options.scheduler_grid:
        del fields["scheduler"]
        schedulers = resolve_scheduler_list(options.schedulers, defaults.grid_schedulers)
        # Left out, the columns are the model's ladder, spread thin enough that the grid fits the cell limit.
        columns = max(MIN_COMPARE_CELLS, defaults.max_grid_cells // max(1, len(schedulers)))
        ladder = spread(defaults.compare_steps, columns)
        steps = resolve_step_list(options.compare_steps, ladder)
        return CompareSchedulersRequest(**fields, schedulers=schedulers, steps=steps)  # type: ignore[arg-type]
    if options.auto_steps and (options.grid or options.guidance_grid or options.scheduler_grid):
        raise InvalidOption("steps: auto is for /imagine: a grid shows its own step counts; leave it out.")
    most = max(defaults.compare_steps) if options.auto_steps else defaults.steps
    return GenerateRequest(
        **fields,  # type: ignore[arg-type]
        steps=most if options.steps is None else options.steps,
        count=1 if options.count is None else options.count,
        film=options.film is True,
        auto_steps=options.auto_steps is True,
    )


def _steps_grid(options: RequestOptions, fields: dict[str, object], defaults: RequestDefaults) -> Request:
    """/compare-steps: the step counts given, else the model's ladder; with `seeds`, a row per seed and the
    ladder left out spread thin enough that every seed's row fits the cell limit."""
    seeds = 1 if options.seeds is None else options.seeds
    if seeds > 1 and options.stop_early:
        raise InvalidOption("Choose one of seeds and stop_early: each draws rows of its own.")
    ladder = defaults.compare_steps
    if seeds > 1:
        ladder = spread(ladder, max(MIN_COMPARE_CELLS, defaults.max_grid_cells // seeds))
    steps = resolve_step_list(options.compare_steps, ladder)
    stop_early = options.stop_early is True
    return CompareStepsRequest(**fields, steps=steps, stop_early=stop_early, seeds=seeds)  # type: ignore[arg-type]


def _strength_grid(options: RequestOptions, fields: dict[str, object], defaults: RequestDefaults) -> Request:
    """A strength grid over the input image: the strengths as columns, the step counts as rows (the
    model's default steps, one row, when left out)."""
    if not options.image:
        raise InvalidOption("A strength comparison starts from an image: attach one with `image`.")
    if options.strength is not None:
        raise InvalidOption("Give the strengths to compare with `strengths`, like 0.3,0.6,0.9.")
    del fields["strength"]
    strengths = resolve_strength_list(options.strengths)
    steps = resolve_step_list(options.compare_steps, (defaults.steps,))
    return CompareStrengthRequest(**fields, strengths=strengths, steps=steps)  # type: ignore[arg-type]


def union_ladder(plain: tuple[int, ...], with_lora: tuple[int, ...], columns: int) -> tuple[int, ...]:
    """Both rows' ladders as one: all their step counts when they fit `columns`, else each spread over
    its share (the few-step ladder keeps its short end in view beside the model's long one)."""
    union = tuple(sorted({*plain, *with_lora}))
    if len(union) <= columns:
        return union
    half = max(1, columns // 2)
    return tuple(sorted({*spread(with_lora, half), *spread(plain, columns - half)}))


def _lora_comparison(options: RequestOptions, fields: dict[str, object], defaults: RequestDefaults) -> Request:
    """/compare-steps with `lora_compare`: a row without the LoRAs, then the row with them, over the union of
    both ladders. A scheduler or guidance given applies to both rows; left out, each row has its own."""
    if options.stop_early:
        raise InvalidOption("Choose one of lora_compare and stop_early: each adds a row of its own.")
    if options.seeds is not None and options.seeds > 1:
        raise InvalidOption("Choose one of seeds and lora_compare: each draws rows of its own.")
    if not fields["loras"]:
        raise InvalidOption("lora_compare needs a LoRA: choose one with lora, or write <lora:name:0.8> in the prompt.")
    plain = defaults.without_loras or RowDefaults(defaults.scheduler, defaults.guidance, defaults.compare_steps)
    row = PlainRow(
        scheduler=plain.scheduler if options.scheduler is None else str(fields["scheduler"]),
        guidance=plain.guidance if options.guidance is None else float(options.guidance),
    )
    columns = max(MIN_COMPARE_CELLS, defaults.max_grid_cells // 2)
    ladder = union_ladder(plain.compare_steps, defaults.compare_steps, columns)
    steps = resolve_step_list(options.compare_steps, ladder)
    return CompareStepsRequest(**fields, steps=steps, without_loras=row)  # type: ignore[arg-type]


def _guidance_grid(options: RequestOptions, fields: dict[str, object], defaults: RequestDefaults) -> Request:
    """A guidance grid: columns from `guidances` (else a ladder around the model's guidance, trimmed to
    fit the cell limit), rows from `compare_steps` (else one row of the model's steps)."""
    default_guidance = float(fields.pop("guidance"))  # type: ignore[arg-type]
    one_row: tuple[int, ...] = (defaults.steps if options.steps is None else options.steps,)
    rows = resolve_step_list(options.compare_steps, one_row)
    if options.guidances is not None and options.guidances.strip():
        guidances = parse_guidance_list(options.guidances)
    else:
        guidances = guidance_ladder(default_guidance, defaults.max_grid_cells // max(1, len(rows)))
    return CompareGuidanceRequest(**fields, guidances=guidances, steps=rows)  # type: ignore[arg-type]


def _resolved_loras(
    asked: tuple[tuple[str, float | None], ...], defaults: RequestDefaults
) -> tuple[tuple[str, float], ...]:
    """The LoRAs under their proper names, a weight left out the LoRA's default (1 for one the model
    lacks: the request is refused by name, with the close ones, when it is checked against the model)."""
    known = {name.casefold(): (name, weight) for name, weight in defaults.lora_weights}
    resolved = []
    for name, weight in asked:
        proper, default = known.get(name.casefold(), (name, 1.0))
        resolved.append((proper, default if weight is None else weight))
    return tuple(resolved)


# --- a result's buttons --------------------------------------------------------------------------

# Vary: img2img of a result at these strengths, with a new seed.
VARY_STRENGTHS = {"vary": 0.35, "vary-strong": 0.7}


def derive_from_image(
    request: GenerateRequest,
    action: str,
    image: bytes,
    size: tuple[int, int],
    *,
    defaults: RequestDefaults | None = None,
    rng: random.Random | None = None,
) -> GenerateRequest:
    """The request a Vary or Upscale button asks for, from the result `image` (normalised PNG bytes of
    `size`): Vary is img2img of it at a subtle or strong strength and a new seed; Upscale x2 is a
    hires pass over it at the model's hires strength and its default steps."""
    defaults = defaults or RequestDefaults()
    width, height = size
    same = dataclasses.replace(request, image=image, width=width, height=height, count=1, film=False, hires=None)
    if action in VARY_STRENGTHS:
        return dataclasses.replace(same, strength=VARY_STRENGTHS[action], seed=random_seed(rng))
    if action == "upscale":
        hires = HiresFix(steps=request.steps, strength=defaults.hires_strength)
        return dataclasses.replace(same, strength=1.0, hires=hires)
    raise ValueError(f"no request to derive from an image for action {action!r}")


def one_of_images(request: GenerateRequest, number: int) -> GenerateRequest:
    """Image `number` (1-based, as V2 and U2 name it) of a result of several, as a request of its own:
    the same run at that image's seed."""
    if not 1 <= number <= request.count:
        images = f"{request.count} image{'s' if request.count > 1 else ''}"
        raise InvalidOption(f"That result has {images}; no image {number}.")
    return dataclasses.replace(request, seed=request.lane_seeds[number - 1], count=1)


def grid_cell(request: Request, number: int) -> GenerateRequest:
    """Cell `number` (1-based, in lane order: row by row) of a comparison grid as the one-image request
    that runs it alone: the grid's prompt, seed, size, model and input image with the cell's own step count,
    scheduler, guidance and strength (and in a LoRA comparison, its row's LoRAs)."""
    lanes = len(request.lane_steps)
    if isinstance(request, GenerateRequest) or not 1 <= number <= lanes:
        raise InvalidOption(f"That grid has {lanes} cells; no cell {number}.")
    index = number - 1
    row = lane_request(request, index)
    guidance = request.lane_guidances[index] if isinstance(request, CompareGuidanceRequest) else row.guidance
    return recast(
        request,
        GenerateRequest,
        seed=request.lane_seeds[index],
        loras=row.loras,
        steps=request.lane_steps[index],
        scheduler=request.lane_schedulers[index],
        guidance=guidance,
        strength=lane_strengths(request)[index],
    )


def step_down(steps: int) -> int | None:
    """The next rung below `steps` on the step ladder, or None at the bottom."""
    lower = [rung for rung in STEP_LADDER if rung < steps and rung >= MIN_STEPS]
    return lower[-1] if lower else None


def step_up(steps: int, ceiling: int = MAX_STEPS) -> int | None:
    """The next rung above `steps` on the step ladder, at most `ceiling` (the model's), or None at the top."""
    higher = [rung for rung in STEP_LADDER if rung > steps and rung <= min(ceiling, MAX_STEPS)]
    return higher[0] if higher else None


def compare_steps_around(
    steps: int, ladder: tuple[int, ...] = DEFAULT_COMPARE_STEPS, max_cells: int = MAX_COMPARE_CELLS
) -> tuple[int, ...]:
    """The model's comparison ladder, plus `steps` itself so the user's image has its cell."""
    cells = set(ladder)
    if len(cells) < max_cells:
        cells.add(steps)
    return tuple(sorted(cells))


def derive_request(
    request: Request,
    action: str,
    *,
    rng: random.Random | None = None,
    defaults: RequestDefaults | None = None,
    max_steps: int = MAX_STEPS,
    max_cells: int = MAX_COMPARE_CELLS,
) -> Request:
    """The request a result button asks for: reroll, fewer/more steps, compare steps or the steps film.

    The job's model stays (it is a field of the request); `defaults` are that model's (its ladder)
    and `max_steps` its ceiling in this server, so "more" stops where the model does.
    """
    ladder = (defaults or RequestDefaults()).compare_steps
    if action == "reroll":
        return dataclasses.replace(request, seed=random_seed(rng))
    if not isinstance(request, GenerateRequest):
        raise InvalidOption("That button works only on single images.")
    if action in ("fewer", "more"):
        steps = step_down(request.steps) if action == "fewer" else step_up(request.steps, max_steps)
        if steps is None:
            now = f"{request.steps} step{'' if request.steps == 1 else 's'}"
            if action == "fewer":
                raise InvalidOption(f"{now} is already the least.")
            raise InvalidOption(f"{now} is already the most{' allowed here' if max_steps < MAX_STEPS else ''}.")
        return dataclasses.replace(request, steps=steps, auto_steps=False)  # an auto job's buttons: fixed counts
    if action == "compare":
        # Everything but the step count carries over: the grid shows this very image among its cells.
        columns = compare_steps_around(request.steps, ladder, max_cells)
        same = {"scheduler": request.scheduler, "guidance": request.guidance, "strength": request.strength}
        return recast(request, CompareStepsRequest, steps=columns, **same)
    if action in VARY_STRENGTHS or action == "upscale":
        raise InvalidOption("That button starts from the result image: use `derive_from_image`.")
    if action == "film":
        # The same run again (model, seed, scheduler, steps), keeping every step's x0; of several
        # images, the first one's seed.
        return dataclasses.replace(request, film=True, count=1, auto_steps=False)
    raise ValueError(f"no request to derive for action {action!r}")

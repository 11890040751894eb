"""Building requests: from a command's options, and from a result's buttons."""

from __future__ import annotations

import dataclasses
import random
from typing import TYPE_CHECKING, TypedDict

from bot.errors import InvalidOption
from bot.views import step_down, step_up
from inference.protocol import (
    DEFAULT_COMPARE_STEPS,
    MAX_COMPARE_CELLS,
    MAX_SEED,
    CompareStepsRequest,
    GenerateRequest,
    InvalidRequest,
    Request,
    parse_size,
    parse_step_list,
)

if TYPE_CHECKING:
    from bot.policy import RequestDefaults

# The longest prompt (and negative prompt) the commands accept.
MAX_PROMPT_CHARS = 1500


class SharedFields(TypedDict):
    """The fields /imagine and /compare-steps fill the same way from their options."""

    prompt: str
    negative_prompt: str
    scheduler: str
    seed: int
    guidance: float
    width: int
    height: int


def shared_fields(
    defaults: RequestDefaults,
    *,
    prompt: str,
    negative_prompt: str | None,
    scheduler: str | None,
    seed: int | None,
    guidance: float | None,
    size: str | None,
) -> SharedFields:
    """A command's options, with the server's defaults and a random seed where left out."""
    width, height = resolve_size(size, defaults)
    return SharedFields(
        prompt=prompt.strip(),
        negative_prompt=(negative_prompt or "").strip(),
        scheduler=defaults.scheduler if scheduler is None else scheduler,
        seed=random_seed() if seed is None else seed,
        guidance=defaults.guidance if guidance is None else guidance,
        width=width,
        height=height,
    )


def random_seed(rng: random.Random | None = None) -> int:
    """A fresh seed in the range the worker accepts."""
    return (rng or random.SystemRandom()).randint(0, MAX_SEED)


def compare_steps_around(steps: int) -> tuple[int, ...]:
    """The default comparison, plus `steps` itself so the user's image has its cell."""
    cells = set(DEFAULT_COMPARE_STEPS)
    if len(cells) < MAX_COMPARE_CELLS:
        cells.add(steps)
    return tuple(sorted(cells))


def derive_request(request: Request, action: str, *, rng: random.Random | None = None) -> Request:
    """The request a result button asks for: reroll, fewer/more steps, or compare steps."""
    if action == "reroll":
        return dataclasses.replace(request, seed=random_seed(rng))
    if not isinstance(request, GenerateRequest):
        raise InvalidOption("That button works only on single images.")
    if action in ("fewer", "more"):
        steps = step_down(request.steps) if action == "fewer" else step_up(request.steps)
        if steps is None:
            raise InvalidOption(f"{request.steps} steps is already the {'least' if action == 'fewer' else 'most'}.")
        return dataclasses.replace(request, steps=steps)
    if action == "compare":
        return CompareStepsRequest(
            prompt=request.prompt,
            steps=compare_steps_around(request.steps),
            scheduler=request.scheduler,
            seed=request.seed,
            guidance=request.guidance,
            width=request.width,
            height=request.height,
            negative_prompt=request.negative_prompt,
        )
    raise ValueError(f"no request to derive for action {action!r}")


def resolve_size(text: str | None, defaults: RequestDefaults) -> tuple[int, int]:
    """(width, height) from a size option like "512" or "768x512", or the defaults."""
    if text is None or not text.strip():
        return defaults.width, defaults.height
    try:
        return parse_size(text.strip())
    except InvalidRequest as error:
        raise InvalidOption(str(error)) from None


def resolve_step_list(text: str | None) -> tuple[int, ...]:
    """Step counts from "5,10,20"; the default comparison when left out."""
    if text is None or not text.strip():
        return DEFAULT_COMPARE_STEPS
    try:
        return parse_step_list(text)
    except InvalidRequest as error:
        raise InvalidOption(str(error)) from None

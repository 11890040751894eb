"""Checking a request against a server's limits before it is queued: steps, sizes, cells, the compute
budget, banned words however they are spelled, and the quota's day."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from bot.formatting import format_amount, format_duration
from bot.limits.server import EffectiveLimits, LimitExceeded
from inference.requests import CompareStepsRequest, GenerateRequest, Request, step_pixels, total_steps
from inference.validation import grid_shape


def next_quota_reset(now: datetime) -> datetime:
    """When daily quotas reset: the next midnight UTC."""
    today = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return today + timedelta(days=1)


def day_start(now: datetime) -> datetime:
    """The start (midnight UTC) of the quota day containing `now`."""
    return next_quota_reset(now) - timedelta(days=1)


def film_decodes(request: Request) -> int:
    """The VAE decodes a Steps film adds to its run: one per step, each step's x0 becoming a frame; a
    stop-early grid's: one per shorter step count, where its longest run is shown stopped."""
    if isinstance(request, CompareStepsRequest) and request.stop_early:
        return len(request.steps) - 1
    return request.steps if isinstance(request, GenerateRequest) and request.film else 0


def compute_cost(request: Request) -> int:
    """The compute budget a request uses: width × height × steps, summed over every image or cell, with
    each of a film's decodes counted as a step (a full-size VAE decode costs about one denoising step
    with guidance: 1.6× with SD 1.5 at 512 px, 0.8× with SDXL at 1024 px, in FLOPs). Only the steps that
    run count: an img2img lane's share at its strength, and a hires pass at its own (larger) size."""
    return step_pixels(request) + request.width * request.height * film_decodes(request)


# Letters of other scripts that look like Latin ones (after case folding), as used to slip a word
# past a filter: Cyrillic "сat" is not "cat" to a computer, but it is to every reader.
CONFUSABLES = str.maketrans(
    {
        # Cyrillic
        "а": "a", "в": "b", "е": "e", "ё": "e", "з": "3", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p",
        "с": "c", "т": "t", "у": "y", "х": "x", "ѕ": "s", "і": "i", "ї": "i", "ј": "j", "һ": "h", "ԁ": "d",
        "ԛ": "q", "ԝ": "w", "ӏ": "l", "ɡ": "g", "ь": "b", "п": "n", "г": "r",
        # Greek
        "α": "a", "β": "b", "γ": "y", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p",
        "τ": "t", "υ": "u", "χ": "x", "ω": "w", "ϲ": "c", "ς": "c", "μ": "u", "ϳ": "j",
        # Latin look-alikes NFKC leaves alone
        "ı": "i", "ȷ": "j", "ǀ": "l", "ł": "l", "ø": "o", "đ": "d", "ħ": "h",
    }
)  # fmt: skip


_TOKEN = re.compile(r"[^\W_]+")


def fold_for_matching(text: str) -> str:
    """`text` as the banned-word filter reads it: compatibility forms (fullwidth, ligatures) and case
    folded, accents, zero-width and other invisible characters dropped, look-alike letters mapped."""
    # Mapped before folding too: NFKC turns some look-alikes (lunate sigma "ϲ") into letters that no longer look alike.
    text = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", text.translate(CONFUSABLES)).casefold())
    kept = "".join(char for char in text if unicodedata.category(char) not in ("Mn", "Me", "Cf"))
    return unicodedata.normalize("NFKC", kept).translate(CONFUSABLES)


@dataclass(frozen=True)
class _Readings:
    """The ways a folded text can spell a word: split at every separator, with separators inside a
    word ignored ("c.a.t"), and runs of single letters joined ("c a t")."""

    tokens: tuple[str, ...]
    words: tuple[str, ...]
    letter_runs: tuple[str, ...]

    @classmethod
    def of(cls, text: str) -> _Readings:
        folded = fold_for_matching(text)
        tokens = tuple(_TOKEN.findall(folded))
        words = tuple(joined for part in folded.split() if (joined := "".join(_TOKEN.findall(part))))
        runs: list[str] = []
        current: list[str] = []
        for token in (*tokens, ""):
            if len(token) == 1:
                current.append(token)
                continue
            if len(current) > 1:
                runs.append("".join(current))
            current = []
        return cls(tokens, words, tuple(runs))

    def contains(self, phrase: tuple[str, ...]) -> bool:
        if not phrase:
            return False
        squashed = "".join(phrase)
        return (
            _has_run(self.tokens, phrase)
            or _has_run(self.words, phrase)
            or squashed in self.words
            or any(squashed in run for run in self.letter_runs)
        )


def _has_run(items: tuple[str, ...], phrase: tuple[str, ...]) -> bool:
    size = len(phrase)
    return any(items[start : start + size] == phrase for start in range(len(items) - size + 1))


def banned_word_in(text: str, banned_words: Sequence[str]) -> str | None:
    """The first banned word or phrase found as a whole word in `text`, or None.

    Both sides are folded (`fold_for_matching`), so fullwidth, look-alike or accented letters,
    zero-width characters and dots or spaces between letters don't hide a word; a phrase matches
    its words in order with any separators between them.
    """
    if not banned_words:
        return None
    readings = _Readings.of(text)
    for word in banned_words:
        if readings.contains(tuple(_TOKEN.findall(fold_for_matching(word)))):
            return word
    return None


def check_image_size(request: Request, limits: EffectiveLimits) -> None:
    """Raise LimitExceeded if the request's width or height is over the server's max image size."""
    if max(request.width, request.height) > limits.max_image_size:
        size = limits.max_image_size
        raise LimitExceeded(
            f"This server allows images of at most {size}×{size}; you asked for {request.width}×{request.height}.",
            limit="max_image_size",
            asked=max(request.width, request.height),
            allowed=size,
        )


def check_upscale(request: Request, limits: EffectiveLimits) -> None:
    """Raise LimitExceeded if an Upscale (a hires pass) would come out larger than the server's upscale cap."""
    if not isinstance(request, GenerateRequest) or request.hires is None:
        return
    width, height = request.output_size
    cap = limits.max_upscale_size
    if max(width, height) > cap:
        raise LimitExceeded(
            f"Upscaled ×{request.hires.scale}, {request.width}x{request.height} would be {width}x{height}; "
            f"this server allows upscales of at most {cap}x{cap}. Upscale a smaller image.",
            limit="max_upscale_size",
            asked=max(width, height),
            allowed=cap,
        )


def check_sizes(request: Request, limits: EffectiveLimits) -> None:
    """The server's size caps: the size asked for, and an upscale's result."""
    check_image_size(request, limits)
    check_upscale(request, limits)


def size_ceiling(request: Request, limits: EffectiveLimits) -> int:
    """The largest side the wire's own checks may allow this request: an upscale's result may be larger
    than the server's max image size (its first pass is not) when the server's upscale cap says so."""
    if isinstance(request, GenerateRequest) and request.hires is not None:
        return max(limits.max_image_size, limits.max_upscale_size)
    return limits.max_image_size


def check_image_input(limits: EffectiveLimits) -> None:
    """Raise LimitExceeded if this server (or the operator) switched image input off."""
    if not limits.image_input:
        raise LimitExceeded(
            "This server has switched image input off; run the command without an image.", limit="image_input"
        )


def check_input_pixels(width: int, height: int, limits: EffectiveLimits) -> None:
    """Raise LimitExceeded if an attached image has more pixels than the server takes (read from its header)."""
    megapixels = width * height / 1e6
    cap = limits.max_input_megapixels
    if megapixels > cap:
        raise LimitExceeded(
            f"That image is {width}x{height} ({megapixels:.3g} megapixels); this server takes images of at most "
            f"{cap:g} megapixels. Send a smaller one.",
            limit="max_input_megapixels",
            asked=round(megapixels, 2),
            allowed=cap,
        )


def check_request(
    request: Request,
    limits: EffectiveLimits,
    *,
    steps_used_today: int,
    active_jobs: int,
    now: datetime | None = None,
) -> None:
    """Raise LimitExceeded naming the limit, the value asked and the value allowed; None if it may be queued.

    `active_jobs` counts the member's jobs queued or running, not including this one.
    """
    check_request_alone(request, limits)
    check_member_usage(request, limits, steps_used_today=steps_used_today, active_jobs=active_jobs, now=now)


def check_request_alone(request: Request, limits: EffectiveLimits) -> None:
    """The limits a request is over by itself (words, models, steps, grid cells, sizes, compute): what needs
    no count of the member's jobs, so a command is refused for them before it is acknowledged."""
    if banned_word_in(request.prompt, limits.banned_words):
        # Never echo the list: it would publish it, and show how to get around it.
        raise LimitExceeded(
            "Your prompt contains a word or phrase this server doesn't allow; please rephrase it.",
            limit="banned_words",
        )
    if banned_word_in(request.negative_prompt, limits.banned_words):
        # The negative prompt is shown with the image as publicly as the prompt.
        raise LimitExceeded(
            "Your negative prompt contains a word or phrase this server doesn't allow (it would be shown "
            "with the image); please leave it out.",
            limit="banned_words",
        )
    for name, _ in request.loras:
        if not limits.lora_allowed(name):
            raise LimitExceeded(
                f"This server doesn't allow the LoRA {name}; "
                f"it allows: {', '.join(limits.allowed_loras or ()) or 'none'}.",
                limit="allowed_loras",
                asked=name,
                allowed=limits.allowed_loras,
            )
    if request.model and limits.allowed_models and request.model not in limits.allowed_models:
        raise LimitExceeded(
            f"This server doesn't allow the model {request.model}; it allows: {', '.join(limits.allowed_models)}.",
            limit="allowed_models",
            asked=request.model,
            allowed=limits.allowed_models,
        )
    for scheduler in dict.fromkeys(request.lane_schedulers):
        if scheduler not in limits.allowed_schedulers:
            raise LimitExceeded(
                f"This server doesn't allow the {scheduler} scheduler; "
                f"it allows: {', '.join(limits.allowed_schedulers)}.",
                limit="allowed_schedulers",
                asked=scheduler,
                allowed=limits.allowed_schedulers,
            )
    most_steps = max(request.lane_steps)
    if most_steps > limits.max_steps:
        raise LimitExceeded(
            f"This server allows at most {limits.max_steps} steps; you asked for {most_steps}.",
            limit="max_steps",
            asked=most_steps,
            allowed=limits.max_steps,
        )
    model_ceiling = limits.max_steps_for(request.model)
    if most_steps > model_ceiling:
        model = request.model or limits.default_model
        raise LimitExceeded(
            f"This server allows at most {model_ceiling} steps with the model {model}; you asked for {most_steps}.",
            limit="model_max_steps",
            asked=most_steps,
            allowed=model_ceiling,
        )
    grid = not isinstance(request, GenerateRequest)
    cells = len(request.lane_steps)
    if grid and cells > limits.max_grid_cells:
        lora_rows = isinstance(request, CompareStepsRequest) and request.without_loras is not None
        advice = "give fewer step counts" if lora_rows else "give fewer of either"  # the rows are fixed
        shape = f" ({words}): {advice}" if (words := grid_shape(request)) else ""
        raise LimitExceeded(
            f"This server allows grids of at most {limits.max_grid_cells} cells; you asked for {cells}{shape}.",
            limit="max_grid_cells",
            asked=cells,
            allowed=limits.max_grid_cells,
        )
    check_sizes(request, limits)
    cost = compute_cost(request)
    if cost > limits.max_compute_per_request:
        budget = limits.max_compute_per_request
        lanes = len(request.lane_steps)
        steps, advice = f"{total_steps(request)} steps", ""
        if request.image:  # an img2img lane runs only its share of its schedule, and only that counts
            steps += " that run"
        if lanes > 1:
            steps += f" over {lanes} cells" if grid else f" over {lanes} images"
        if decodes := film_decodes(request):
            steps = f"{total_steps(request) + decodes}: {steps} and a film frame decoded at each, counted as a step"
            advice = " Ask for fewer steps, a smaller size or no film."
        raise LimitExceeded(
            f"This request needs {format_amount(cost, like=budget)} pixel-steps "
            f"({request.width}×{request.height} × {steps}); "
            f"this server allows {format_amount(budget, like=cost)} per request.{advice}",
            limit="max_compute_per_request",
            asked=cost,
            allowed=budget,
        )


def check_member_usage(
    request: Request, limits: EffectiveLimits, *, steps_used_today: int, active_jobs: int, now: datetime | None = None
) -> None:
    """The member's jobs at a time and steps today (counted in the ledger), with this request."""
    if active_jobs >= limits.max_concurrent_jobs_per_user:
        allowed = limits.max_concurrent_jobs_per_user
        raise LimitExceeded(
            f"This server allows {allowed} job{'s' if allowed != 1 else ''} at a time per member; "
            f"you already have {active_jobs} queued or running. Try again when one has finished.",
            limit="max_concurrent_jobs_per_user",
            asked=active_jobs + 1,
            allowed=allowed,
        )
    needed = total_steps(request)
    quota = limits.daily_steps_per_user
    if steps_used_today + needed > quota:
        now = now or datetime.now(UTC)
        resets_at = next_quota_reset(now)
        raise LimitExceeded(
            f"You have used {steps_used_today:,} of your {quota:,} daily steps; "
            f"this request needs {needed:,}. "
            f"Your quota resets in {format_duration(resets_at - now)} ({resets_at:%H:%M} UTC).",
            limit="daily_steps_per_user",
            asked=steps_used_today + needed,
            allowed=quota,
        )

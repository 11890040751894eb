"""Per-server limits: combining them with the operator's ceilings, validating changes, checking requests.

Pure logic, no database: `bot.storage.limit_store` stores `ServerLimits`, `bot.jobs.policy` calls
`check_request` before anything is queued.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from bot.config import Settings
from bot.errors import InvalidOption, UserFacingError, echo
from bot.formatting import format_amount, format_duration
from bot.job_requests import RequestDefaults, find_scheduler
from inference.protocol import (
    DEFAULT_GRID_SCHEDULERS,
    FLOW_GRID_SCHEDULERS,
    MIN_COMPARE_CELLS,
    MIN_GRID_SCHEDULERS,
    MIN_SIZE,
    MIN_STEPS,
    SCHEDULER_NAMES,
    CompareSchedulersRequest,
    CompareStepsRequest,
    GenerateRequest,
    ModelInfo,
    ModelUnavailable,
    Request,
    total_steps,
)
from inference.registry import ModelSpec

MAX_BANNED_WORDS = 200
MAX_BANNED_WORD_LENGTH = 100


class LimitExceeded(UserFacingError):
    """A request is over one of the server's limits; nothing was queued.

    `limit` is the field's name, `asked` what the request needs, `allowed` the server's value.
    """

    def __init__(self, message: str, *, limit: str, asked: Any = None, allowed: Any = None) -> None:
        super().__init__(message)
        self.limit = limit
        self.asked = asked
        self.allowed = allowed


class InvalidLimit(UserFacingError):
    """A `/limits-set` value is out of range; the message names the setting and the allowed range.

    `template` says `{setting}` where the setting's name goes: `field` by default, or the name
    another surface gives it (`renamed`: the admin command's option names).
    """

    def __init__(self, template: str, *, field: str, name: str | None = None) -> None:
        super().__init__(template.replace(SETTING, name or field))
        self.template = template
        self.field = field

    def renamed(self, name: str) -> InvalidLimit:
        """The same refusal, calling the setting `name`."""
        return InvalidLimit(self.template, field=self.field, name=name)


SETTING = "{setting}"


@dataclass(frozen=True)
class ServerLimits:
    """A server's own settings as stored; None means "the operator's value"."""

    max_steps: int | None = None
    default_steps: int | None = None
    allowed_schedulers: tuple[str, ...] | None = None
    default_scheduler: str | None = None
    max_grid_cells: int | None = None
    max_image_size: int | None = None
    max_compute_per_request: int | None = None
    daily_steps_per_user: int | None = None
    max_concurrent_jobs_per_user: int | None = None
    banned_words: tuple[str, ...] | None = None
    allowed_models: tuple[str, ...] | None = None  # registry names members may choose
    default_model: str | None = None
    model_max_steps: tuple[tuple[str, int], ...] | None = None  # (model, ceiling), tighter than max_steps

    def with_changes(self, changes: dict[str, Any]) -> ServerLimits:
        return replace(self, **changes)


LIMIT_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(ServerLimits))

# How each field reads in messages and in `/limits show`.
LIMIT_LABELS: dict[str, str] = {
    "max_steps": "max steps",
    "default_steps": "default steps",
    "allowed_schedulers": "allowed schedulers",
    "default_scheduler": "default scheduler",
    "max_grid_cells": "max grid cells",
    "max_image_size": "max image size",
    "max_compute_per_request": "compute budget per request",
    "daily_steps_per_user": "daily steps per member",
    "max_concurrent_jobs_per_user": "concurrent jobs per member",
    "banned_words": "banned words",
    "allowed_models": "allowed models",
    "default_model": "default model",
    "model_max_steps": "max steps per model",
}


@dataclass(frozen=True)
class EffectiveLimits:
    """The limits that apply in one server: its own values, never looser than the operator's."""

    max_steps: int
    default_steps: int
    allowed_schedulers: tuple[str, ...]
    default_scheduler: str
    max_grid_cells: int
    max_image_size: int
    max_compute_per_request: int
    daily_steps_per_user: int
    max_concurrent_jobs_per_user: int
    banned_words: tuple[str, ...]
    allowed_models: tuple[str, ...] = ()  # in the registry's order; () = no registry known (any model)
    default_model: str = ""
    model_max_steps: tuple[tuple[str, int], ...] = ()  # every allowed model's step ceiling
    # Defaults someone chose (the server, else the operator explicitly): they win over a model's own.
    chosen_default_steps: int | None = None
    chosen_default_scheduler: str | None = None

    @classmethod
    def combine(
        cls, server: ServerLimits | None, settings: Settings, *, models: Sequence[ModelSpec] | None = None
    ) -> EffectiveLimits:
        """Tighten the operator's ceilings with the server's values (a server can't loosen them).

        `models` is the operator's registry (default: the one in `settings`); a model's registry
        `max_steps` is a ceiling the server can only tighten.
        """
        server = server or ServerLimits()
        registry = tuple(models) if models is not None else settings.model_specs()

        def tighter(own: int | None, ceiling: int) -> int:
            return ceiling if own is None else min(own, ceiling)

        max_steps = tighter(server.max_steps, settings.max_steps)
        default_steps = min(server.default_steps or settings.default_steps, max_steps)
        allowed = SCHEDULER_NAMES
        if server.allowed_schedulers is not None:
            allowed = tuple(name for name in SCHEDULER_NAMES if name in server.allowed_schedulers) or allowed
        for candidate in (server.default_scheduler, settings.default_scheduler):
            if candidate in allowed:
                default_scheduler = candidate
                break
        else:
            default_scheduler = allowed[0]
        models_allowed = _allowed_models(server, registry)
        default_model = server.default_model if server.default_model in models_allowed else models_allowed[0]
        own_ceilings = dict(server.model_max_steps or ())
        model_max_steps = tuple(
            (spec.name, min(max_steps, spec.max_steps or max_steps, own_ceilings.get(spec.name, max_steps)))
            for spec in registry
            if spec.name in models_allowed
        )
        operator_set = settings.model_fields_set
        chosen_steps = server.default_steps or (settings.default_steps if "default_steps" in operator_set else None)
        chosen_scheduler = server.default_scheduler or (
            settings.default_scheduler if "default_scheduler" in operator_set else None
        )
        return cls(
            max_steps=max_steps,
            default_steps=max(default_steps, MIN_STEPS),
            allowed_schedulers=allowed,
            default_scheduler=default_scheduler,
            max_grid_cells=tighter(server.max_grid_cells, settings.max_grid_cells),
            max_image_size=tighter(server.max_image_size, settings.max_image_size),
            max_compute_per_request=tighter(server.max_compute_per_request, settings.max_compute_per_request),
            daily_steps_per_user=tighter(server.daily_steps_per_user, settings.daily_steps_per_user),
            max_concurrent_jobs_per_user=tighter(
                server.max_concurrent_jobs_per_user, settings.max_concurrent_jobs_per_user
            ),
            banned_words=server.banned_words or (),
            allowed_models=models_allowed,
            default_model=default_model,
            model_max_steps=model_max_steps,
            chosen_default_steps=chosen_steps,
            chosen_default_scheduler=chosen_scheduler,
        )

    def max_steps_for(self, model: str) -> int:
        """The most steps per image with `model` in this server ("" = the default model)."""
        return dict(self.model_max_steps).get(model or self.default_model, self.max_steps)

    def request_defaults(self, model: ModelInfo | None = None) -> RequestDefaults:
        """Values for the options a member left out in this server: the one place defaults are made.

        With a model: its own scheduler, steps, guidance, size (its native size within the max
        image size) and compare ladder, unless the server (or the operator) chose a default step
        count or scheduler that fits the model. Without one (no worker ready yet): the server's.
        """
        if model is None:
            return RequestDefaults(steps=self.default_steps, scheduler=self.default_scheduler)
        ceiling = min(self.max_steps_for(model.name), model.max_steps or self.max_steps)
        steps = min(self.chosen_default_steps or model.default_steps, ceiling)
        runnable = [name for name in model.schedulers if name in self.allowed_schedulers]
        candidates = (self.chosen_default_scheduler, model.default_scheduler, *runnable)
        scheduler = next((name for name in candidates if name in runnable), model.default_scheduler)
        ladder = tuple(rung for rung in model.compare_steps if rung <= ceiling)[: self.max_grid_cells]
        if len(ladder) < MIN_COMPARE_CELLS:
            ladder = model.compare_steps[: self.max_grid_cells]  # refused with the ceiling named, not emptied
        size = _default_size(model, self.max_image_size)
        return RequestDefaults(
            grid_schedulers=_grid_schedulers(runnable, model.default_scheduler)
            or tuple(dict.fromkeys((scheduler, *runnable)))[:4],
            max_grid_cells=self.max_grid_cells,
            steps=max(steps, MIN_STEPS),
            scheduler=scheduler,
            guidance=model.default_guidance,
            width=size,
            height=size,
            compare_steps=ladder,
            model=model.name,
        )


def _grid_schedulers(runnable: Sequence[str], own: str) -> tuple[str, ...]:
    """The default rows of a scheduler grid: a varied set, as far as the model can run them and the server
    allows (at least two when it allows two; flow-matching models run Euler, Heun, DPM++ 2M and UniPC),
    led by the model's own scheduler where the set lacks it (LCM for an LCM model)."""
    for preferred in (DEFAULT_GRID_SCHEDULERS, FLOW_GRID_SCHEDULERS):
        chosen = tuple(name for name in preferred if name in runnable)
        if len(chosen) >= MIN_GRID_SCHEDULERS:
            return chosen if own in chosen or own not in runnable else (own, *chosen)[: len(preferred)]
    return ()


def _default_size(model: ModelInfo, max_image_size: int) -> int:
    """The model's native size, within this server's largest size, on the model's size grid."""
    size = max(min(model.native_size, max_image_size), MIN_SIZE)
    size -= size % model.size_multiple
    return size if size >= MIN_SIZE else size + model.size_multiple


def _allowed_models(server: ServerLimits, registry: Sequence[ModelSpec]) -> tuple[str, ...]:
    names = tuple(spec.name for spec in registry)
    if server.allowed_models is None:
        return names
    return tuple(name for name in names if name in server.allowed_models) or names


# --- choosing the model -----------------------------------------------------------------------


class UnknownModel(InvalidOption):
    """A model name nobody configured, or one that failed to load."""


def choose_model(
    name: str | None,
    limits: EffectiveLimits,
    loaded: Mapping[str, ModelInfo],
    unavailable: Mapping[str, ModelUnavailable] | None = None,
) -> ModelInfo | None:
    """The loaded model a command asks for (the server's default when left out).

    None while no model is known (the worker is still loading). Raises LimitExceeded for a model
    this server doesn't allow and UnknownModel for one that isn't there or failed to load.
    """
    if not loaded:
        return None
    unavailable = unavailable or {}
    allowed = [model for model in limits.allowed_models if model in loaded] if limits.allowed_models else list(loaded)
    wanted = (name or "").strip()
    if not wanted:
        for candidate in (limits.default_model, *allowed):
            if candidate in loaded and (not limits.allowed_models or candidate in limits.allowed_models):
                return loaded[candidate]
        reasons = "; ".join(f"{item.name}: {item.message}" for item in unavailable.values())
        raise UnknownModel(f"None of this server's models is available right now ({reasons or 'none loaded'}).")
    match = _find_name(wanted, (*loaded, *unavailable, *limits.allowed_models))
    if match is not None and limits.allowed_models and match not in limits.allowed_models:
        raise LimitExceeded(
            f"This server doesn't allow the model {match}; it allows: {', '.join(allowed) or 'none loaded'}.",
            limit="allowed_models",
            asked=match,
            allowed=tuple(allowed),
        )
    if match is not None and match in unavailable:
        raise UnknownModel(f"The model {match} is unavailable: {unavailable[match].message}")
    if match is None or match not in loaded:
        raise UnknownModel(f"Unknown model {wanted!r}; choose one of: {', '.join(allowed)}.")
    return loaded[match]


def _find_name(wanted: str, names: Iterable[str]) -> str | None:
    """The model name `wanted` means, in any capitalisation."""
    folded = wanted.casefold()
    return next((name for name in names if name.casefold() == folded), None)


# --- validating `/limits set` ------------------------------------------------------------------


def validate_limit_changes(changes: dict[str, Any], current: ServerLimits, settings: Settings) -> dict[str, Any]:
    """Validate several changes made together, each checked against the state with all of them applied."""
    for field in changes:
        if field not in LIMIT_FIELDS:
            raise InvalidLimit(
                f"Unknown setting {echo(field)}; the settings are: {', '.join(LIMIT_FIELDS)}.", field=field
            )
    normalised = {field: _normalise(field, value, settings) for field, value in changes.items()}
    proposed = current.with_changes(normalised)
    for field, value in normalised.items():
        if value is not None:
            _check_consistent(field, value, proposed, settings, changing=set(normalised))
    return normalised


def _normalise(field: str, value: Any, settings: Settings) -> Any:
    """Type, spelling and the operator's ceilings: everything that doesn't depend on other settings."""
    if value is None:
        return None
    ceilings = {
        "max_steps": (MIN_STEPS, settings.max_steps, "the operator's ceiling"),
        "default_steps": (MIN_STEPS, settings.max_steps, "the operator's max steps"),
        "max_grid_cells": (MIN_COMPARE_CELLS, settings.max_grid_cells, "the operator's ceiling"),
        "max_image_size": (MIN_SIZE, settings.max_image_size, "the operator's ceiling"),
        "max_compute_per_request": (1, settings.max_compute_per_request, "the operator's ceiling"),
        "daily_steps_per_user": (1, settings.daily_steps_per_user, "the operator's ceiling"),
        "max_concurrent_jobs_per_user": (1, settings.max_concurrent_jobs_per_user, "the operator's ceiling"),
    }
    if field in ceilings:
        low, high, note = ceilings[field]
        return _int_in_range(field, value, low, high, high_note=note)
    if field == "default_scheduler":
        return _scheduler_name(field, value)
    if field == "allowed_schedulers":
        names = {_scheduler_name(field, item) for item in _as_items(field, value)}
        if not names:
            raise InvalidLimit(f"{SETTING} needs at least one scheduler; reset it to allow them all.", field=field)
        return tuple(name for name in SCHEDULER_NAMES if name in names)
    if field == "banned_words":
        words = tuple(dict.fromkeys(word for word in map(_normalise_word, _as_items(field, value)) if word))
        if len(words) > MAX_BANNED_WORDS:
            raise InvalidLimit(f"{SETTING} may hold at most {MAX_BANNED_WORDS} words; got {len(words)}.", field=field)
        if any(len(word) > MAX_BANNED_WORD_LENGTH for word in words):
            raise InvalidLimit(
                f"Each banned word may be at most {MAX_BANNED_WORD_LENGTH} characters long.", field=field
            )
        return words or None
    if field in ("allowed_models", "default_model", "model_max_steps"):
        return _normalise_models(field, value, settings)
    raise AssertionError(f"no validation for {field}")  # pragma: no cover - LIMIT_FIELDS is exhaustive


def _check_consistent(
    field: str, value: Any, proposed: ServerLimits, settings: Settings, *, changing: set[str]
) -> None:
    """Rules between settings: a default within its maximum, a default scheduler that is allowed.

    When a default and its maximum or allowed list change together, the default's check speaks: it
    names the new list the default must be in, where the list's own check would ask the admin to
    "change the default first", which they are doing.
    """
    effective = EffectiveLimits.combine(proposed, settings)
    if (
        field == "max_steps"
        and "default_steps" not in changing
        and proposed.default_steps is not None
        and value < proposed.default_steps
    ):
        low = proposed.default_steps
        raise InvalidLimit(
            f"{SETTING} must be {low} to {settings.max_steps} (at least this server's default steps, {low}); "
            f"got {value}.",
            field=field,
        )
    if field == "default_steps" and value > effective.max_steps:
        raise InvalidLimit(
            f"{SETTING} must be {MIN_STEPS} to {effective.max_steps} (this server's max steps); got {value}.",
            field=field,
        )
    if field == "default_scheduler" and value not in effective.allowed_schedulers:
        raise InvalidLimit(
            f"{SETTING} must be one of this server's allowed schedulers "
            f"({', '.join(effective.allowed_schedulers)}); got {value}.",
            field=field,
        )
    if field == "default_model" and value not in effective.allowed_models:
        raise InvalidLimit(
            f"{SETTING} must be one of this server's allowed models ({', '.join(effective.allowed_models)}); "
            f"got {value}.",
            field=field,
        )
    if field == "allowed_models" and "default_model" not in changing and proposed.default_model not in (None, *value):
        raise InvalidLimit(
            f"{SETTING} must include this server's default model ({proposed.default_model}); "
            f"change the default first or allow it.",
            field=field,
        )
    if (
        field == "allowed_schedulers"
        and "default_scheduler" not in changing
        and proposed.default_scheduler not in (None, *value)
    ):
        raise InvalidLimit(
            f"{SETTING} must include this server's default scheduler ({proposed.default_scheduler}); "
            f"change the default first or allow it.",
            field=field,
        )


def _normalise_models(field: str, value: Any, settings: Settings) -> Any:
    """Model settings name models of the operator's registry; per-model ceilings stay under theirs."""
    registry = {spec.name: spec for spec in settings.model_specs()}

    def known(name: str) -> str:
        match = _find_name(name, registry)
        if match is None:
            raise InvalidLimit(
                f"{SETTING}: unknown model {name!r}; the operator's models are: {', '.join(registry)}.", field=field
            )
        return match

    if field == "default_model":
        if not isinstance(value, str):
            raise InvalidLimit(f"{SETTING} must be a model name; got {value!r}.", field=field)
        return known(value.strip())
    if field == "allowed_models":
        names = {known(item) for item in _as_items(field, value)}
        if not names:
            raise InvalidLimit(f"{SETTING} needs at least one model; reset it to allow them all.", field=field)
        return tuple(name for name in registry if name in names)
    ceilings: dict[str, int] = {}
    for item in value.items() if isinstance(value, Mapping) else _as_pairs(field, value):
        name, steps = item
        model = known(str(name).strip())
        high = min(settings.max_steps, registry[model].max_steps or settings.max_steps)
        note = "the operator's ceiling"
        if high < settings.max_steps:
            note = "the model's ceiling in the operator's registry"
        ceilings[model] = _int_in_range(field, steps, MIN_STEPS, high, high_note=f"{note} for {model}")
    return tuple((name, ceilings[name]) for name in registry if name in ceilings) or None


def _as_pairs(field: str, value: Any) -> list[tuple[str, str]]:
    """ "sdxl-turbo=8, flux=28" (or with ':') as (model, steps) pairs."""
    pairs = []
    for item in _as_items(field, value):
        name, sep, steps = item.replace(":", "=").partition("=")
        if not sep or not name.strip() or not steps.strip():
            raise InvalidLimit(f"{SETTING}: write each model's ceiling like sdxl-turbo=8; got {item!r}.", field=field)
        pairs.append((name.strip(), steps.strip()))
    return pairs


def _int_in_range(
    field: str,
    value: Any,
    low: int,
    high: int,
    *,
    low_note: str = "",
    high_note: str = "the operator's ceiling",
) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InvalidLimit(
            f"{SETTING} must be a whole number from {low:,} to {high:,}; got {echo(value)}.", field=field
        )
    try:
        number = int(value)
    except ValueError:
        raise InvalidLimit(
            f"{SETTING} must be a whole number from {low:,} to {high:,}; got {echo(value)}.", field=field
        ) from None
    if not low <= number <= high:
        why = f" ({high_note})" if number > high else ""
        raise InvalidLimit(f"{SETTING} must be {low:,} to {high:,}{why}; got {number:,}.", field=field)
    return number


def _as_items(field: str, value: Any) -> list[str]:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, Iterable) and all(isinstance(item, str) for item in value):
        return [item.strip() for item in value if item.strip()]
    raise InvalidLimit(f"{SETTING} must be a comma-separated list; got {echo(value)}.", field=field)


def _scheduler_name(field: str, value: Any) -> str:
    name = find_scheduler(value) if isinstance(value, str) else None
    if name is None:
        raise InvalidLimit(
            f"{SETTING}: unknown scheduler {echo(value)}; known: {', '.join(SCHEDULER_NAMES)}.", field=field
        )
    return name


def _normalise_word(word: str) -> str:
    return " ".join(word.casefold().split())


# --- checking a request ------------------------------------------------------------------------


def next_quota_reset(now: datetime) -> datetime:
    """When daily quotas reset: the next midnight UTC."""
    today = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return today + timedelta(days=1)


def day_start(now: datetime) -> datetime:
    """The start (midnight UTC) of the quota day containing `now`."""
    return next_quota_reset(now) - timedelta(days=1)


def film_decodes(request: Request) -> int:
    """The VAE decodes a Steps film adds to its run: one per step, each step's x0 becoming a frame."""
    return request.steps if isinstance(request, GenerateRequest) and request.film else 0


def compute_cost(request: Request) -> int:
    """The compute budget a request uses: width × height × steps, summed over every image or cell, with
    each of a film's decodes counted as a step (a full-size VAE decode costs about one denoising step
    with guidance: 1.6× with SD 1.5 at 512 px, 0.8× with SDXL at 1024 px, in FLOPs)."""
    return request.width * request.height * (total_steps(request) + film_decodes(request))


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
    grid = isinstance(request, CompareStepsRequest | CompareSchedulersRequest)
    cells = len(request.lane_steps)
    if grid and cells > limits.max_grid_cells:
        shape = ""
        if isinstance(request, CompareSchedulersRequest):
            shape = f" ({len(request.schedulers)} schedulers × {len(request.steps)} step counts): give fewer of either"
        raise LimitExceeded(
            f"This server allows grids of at most {limits.max_grid_cells} cells; you asked for {cells}{shape}.",
            limit="max_grid_cells",
            asked=cells,
            allowed=limits.max_grid_cells,
        )
    check_image_size(request, limits)
    cost = compute_cost(request)
    if cost > limits.max_compute_per_request:
        budget = limits.max_compute_per_request
        lanes = len(request.lane_steps)
        steps, advice = f"{total_steps(request)} steps", ""
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

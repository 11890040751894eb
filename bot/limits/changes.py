"""An admin's changes to a server's limits: each value normalised and checked against the operator's
ceilings and the other limits, with one clear error naming what to change."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from bot.config import MIN_INPUT_MEGAPIXELS, Settings
from bot.job_requests import find_scheduler
from bot.limits.server import (
    FLAGGED_EVERYWHERE,
    FLAGGED_POLICIES,
    LIMIT_FIELDS,
    MAX_BANNED_WORD_LENGTH,
    MAX_BANNED_WORDS,
    SETTING,
    EffectiveLimits,
    InvalidLimit,
    ServerLimits,
    find_name,
    operator_upscale_size,
)
from inference.clipping import echo
from inference.requests import MIN_COMPARE_CELLS, MIN_SIZE, MIN_STEPS, SCHEDULER_NAMES


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
    if field == "flagged_images":
        return _flagged_policy(field, value, settings)
    if field == "image_input":
        return _image_input(field, value, settings)
    if field == "learned_steps":
        if not isinstance(value, bool):
            raise InvalidLimit(f"{SETTING} must be on (true) or off (false); got {echo(value)}.", field=field)
        return value
    if field == "max_input_megapixels":
        return _megapixels(field, value, settings)
    if field == "max_upscale_size":
        ceiling = operator_upscale_size(settings)
        return _int_in_range(field, value, MIN_SIZE, ceiling, high_note="the operator's ceiling")
    if field in ("allowed_models", "default_model", "model_max_steps"):
        return _normalise_models(field, value, settings)
    if field == "allowed_loras":
        return _normalise_loras(field, value, settings)
    raise AssertionError(f"no validation for {field}")  # pragma: no cover - LIMIT_FIELDS is exhaustive


def _flagged_policy(field: str, value: Any, settings: Settings) -> str:
    policy = str(value).strip().casefold()
    if policy not in FLAGGED_POLICIES:
        raise InvalidLimit(
            f"{SETTING} must be one of {', '.join(FLAGGED_POLICIES)}; got {echo(str(value))}.", field=field
        )
    if policy == FLAGGED_EVERYWHERE and not settings.safety_allow_everywhere:
        raise InvalidLimit(
            f"The operator doesn't allow flagged pictures outside age-restricted channels; set {SETTING} to one of "
            f"{', '.join(p for p in FLAGGED_POLICIES if p != FLAGGED_EVERYWHERE)}.",
            field=field,
        )
    return policy


def _image_input(field: str, value: Any, settings: Settings) -> bool:
    if not isinstance(value, bool):
        raise InvalidLimit(f"{SETTING} must be on (true) or off (false); got {echo(value)}.", field=field)
    if value and not settings.image_input:
        raise InvalidLimit(f"The operator has switched image input off; {SETTING} can't be switched on.", field=field)
    return value


def _megapixels(field: str, value: Any, settings: Settings) -> float:
    low, high = MIN_INPUT_MEGAPIXELS, settings.max_input_megapixels
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise InvalidLimit(f"{SETTING} must be a number of megapixels from {low:g} to {high:g}; got {echo(value)}.",
                           field=field)  # fmt: skip
    if not low <= number <= high:
        why = " (the operator's ceiling)" if number > high else ""
        raise InvalidLimit(f"{SETTING} must be {low:g} to {high:g} megapixels{why}; got {number:g}.", field=field)
    return round(number, 2)


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


def _normalise_loras(field: str, value: Any, settings: Settings) -> tuple[str, ...]:
    """LoRA names of the operator's registry (any model's), in its order; "none" allows none."""
    registry = tuple(dict.fromkeys(lora.name for spec in settings.model_specs() for lora in spec.loras))
    items = [item.strip() for item in _as_items(field, value)]
    if [item.casefold() for item in items] == ["none"]:
        return ()
    names = set()
    for item in items:
        match = find_name(item, registry)
        if match is None:
            known = ", ".join(registry) or "none"
            raise InvalidLimit(
                f"{SETTING}: unknown LoRA {item!r}; the operator's LoRAs are: {known} (or write none).", field=field
            )
        names.add(match)
    if not names:
        raise InvalidLimit(f"{SETTING} needs at least one LoRA, or none; reset it to allow them all.", field=field)
    return tuple(name for name in registry if name in names)


def _normalise_models(field: str, value: Any, settings: Settings) -> Any:
    """Model settings name models of the operator's registry; per-model ceilings stay under theirs."""
    registry = {spec.name: spec for spec in settings.model_specs()}

    def known(name: str) -> str:
        match = find_name(name, registry)
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

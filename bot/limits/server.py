"""A server's limits as data: what admins set, combined with the operator's ceilings into what applies.

Pure logic, no database: `bot.storage.limit_store` stores `ServerLimits`; `bot.limits.changes` checks an
admin's changes, `bot.limits.checks` a request, before anything is queued."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

from bot.config import MAX_INPUT_MEGAPIXELS, Settings
from bot.errors import InvalidOption, UserFacingError
from bot.job_requests import RequestDefaults, RowDefaults
from inference.model_info import LoraInfo, ModelInfo, ModelUnavailable
from inference.registry import ModelSpec
from inference.requests import (
    DEFAULT_GRID_SCHEDULERS,
    FLOW_GRID_SCHEDULERS,
    MAX_SIZE,
    MIN_COMPARE_CELLS,
    MIN_GRID_SCHEDULERS,
    MIN_SIZE,
    MIN_STEPS,
    SCHEDULER_NAMES,
    SIZE_MULTIPLE,
)

MAX_BANNED_WORDS = 200

# Where pictures the image checker flagged may be posted in a server (`flagged_images`). Outside an
# age-restricted channel (Discord's `nsfw` flag; a thread follows its parent) a flagged picture is
# withheld unless the server chose "everywhere", which the operator must allow.
FLAGGED_AGE_RESTRICTED = "age-restricted"
FLAGGED_SPOILER = "age-restricted-spoiler"
FLAGGED_NOWHERE = "nowhere"
FLAGGED_EVERYWHERE = "everywhere"
FLAGGED_POLICIES: dict[str, str] = {
    FLAGGED_AGE_RESTRICTED: "in age-restricted channels",
    FLAGGED_SPOILER: "in age-restricted channels, as spoilers",
    FLAGGED_NOWHERE: "nowhere",
    FLAGGED_EVERYWHERE: "in every channel, as spoilers",
}


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
    flagged_images: str | None = None  # one of FLAGGED_POLICIES
    allowed_loras: tuple[str, ...] | None = None  # registry LoRA names members may choose; () = none
    image_input: bool | None = None  # whether members may attach an image to start from (False: off here)
    max_input_megapixels: float | None = None  # the most pixels an attached image may have, in millions
    max_upscale_size: int | None = None  # the largest side of an Upscale result (None: the max image size)
    learned_steps: bool | None = None  # /imagine without steps runs where this server's grids settle

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
    "flagged_images": "flagged pictures posted",
    "allowed_loras": "allowed LoRAs",
    "image_input": "image input",
    "max_input_megapixels": "max input image",
    "max_upscale_size": "max upscale size",
    "learned_steps": "learned steps",
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
    flagged_images: str = FLAGGED_AGE_RESTRICTED
    allowed_loras: tuple[str, ...] | None = None  # None = every LoRA of the operator's registry
    image_input: bool = True
    max_input_megapixels: float = MAX_INPUT_MEGAPIXELS
    max_upscale_size: int = MAX_SIZE
    learned_steps: bool = False  # /imagine without steps: where this server's grids settle, once enough have
    learned_steps_min_grids: int = 3  # the operator's N: never learned from fewer grids

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
        max_image_size = tighter(server.max_image_size, settings.max_image_size)
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
            max_image_size=max_image_size,
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
            flagged_images=_flagged_policy(server.flagged_images, settings),
            allowed_loras=server.allowed_loras,
            image_input=settings.image_input and server.image_input is not False,
            max_input_megapixels=min(server.max_input_megapixels or math.inf, settings.max_input_megapixels),
            max_upscale_size=_upscale_ceiling(server, settings, max_image_size=max_image_size),
            learned_steps=settings.learned_steps if server.learned_steps is None else server.learned_steps,
            learned_steps_min_grids=settings.learned_steps_min_grids,
        )

    def posts_flagged(self, *, age_restricted: bool) -> bool:
        """Whether a picture the checker flagged may be posted in a channel of this server."""
        if self.flagged_images == FLAGGED_EVERYWHERE:
            return True
        return age_restricted and self.flagged_images != FLAGGED_NOWHERE

    @property
    def spoils_flagged(self) -> bool:
        """Flagged pictures that are posted go as spoilers."""
        return self.flagged_images in (FLAGGED_SPOILER, FLAGGED_EVERYWHERE)

    def lora_allowed(self, name: str) -> bool:
        return self.allowed_loras is None or name in self.allowed_loras

    def max_steps_for(self, model: str) -> int:
        """The most steps per image with `model` in this server ("" = the default model)."""
        return dict(self.model_max_steps).get(model or self.default_model, self.max_steps)

    def request_defaults(self, model: ModelInfo | None = None, loras: Sequence[str] = ()) -> RequestDefaults:
        """Values for the options a member left out in this server: the one place defaults are made.

        With a model: its own scheduler, steps, guidance, size (its native size within the max
        image size) and compare ladder, unless the server (or the operator) chose a default step
        count or scheduler that fits the model. A step-distillation LoRA among `loras` replaces the
        model's steps, scheduler, guidance and ladder with its own (over the server's choices too).
        Without a model (no worker ready yet): the server's, at a generic size within its max image size.
        """
        if model is None:
            size = min(RequestDefaults.width, self.max_image_size)
            size -= size % SIZE_MULTIPLE
            return RequestDefaults(steps=self.default_steps, scheduler=self.default_scheduler, width=size, height=size)
        few_step = _few_step_lora(model, loras)
        chosen_steps, chosen_scheduler = self.chosen_default_steps, self.chosen_default_scheduler
        without_loras = None
        if few_step is not None:
            plain = self.request_defaults(model)  # a LoRA comparison's row without it
            without_loras = RowDefaults(plain.scheduler, plain.guidance, plain.compare_steps)
            model = _with_few_step_lora(model, few_step)
            chosen_steps = chosen_scheduler = None
        ceiling = min(self.max_steps_for(model.name), model.max_steps or self.max_steps)
        steps = min(chosen_steps or model.default_steps, ceiling)
        runnable = [name for name in model.schedulers if name in self.allowed_schedulers]
        candidates = (chosen_scheduler, model.default_scheduler, *runnable)
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
            lora_weights=tuple((lora.name, lora.default_weight) for lora in model.loras),
            strength=model.default_strength,
            hires_strength=model.hires_strength,
            without_loras=without_loras,
        )


def operator_upscale_size(settings: Settings) -> int:
    """The operator's ceiling on an Upscale result's largest side: their own, else their max image size."""
    return settings.max_upscale_size or settings.max_image_size


def _upscale_ceiling(server: ServerLimits, settings: Settings, *, max_image_size: int) -> int:
    """A server's own upscale cap, else the operator's, else the server's max image size; never over the
    operator's ceiling."""
    for own in (server.max_upscale_size, settings.max_upscale_size, max_image_size):
        if own is not None:
            return min(own, operator_upscale_size(settings))
    raise AssertionError("max_image_size is always set")  # pragma: no cover


def _flagged_policy(own: str | None, settings: Settings) -> str:
    """The server's choice, unless it is "everywhere" and the operator no longer allows it."""
    if own not in FLAGGED_POLICIES or (own == FLAGGED_EVERYWHERE and not settings.safety_allow_everywhere):
        return FLAGGED_AGE_RESTRICTED
    return own


def _few_step_lora(model: ModelInfo, names: Sequence[str]) -> LoraInfo | None:
    """The first step-distillation LoRA among `names` (any capitalisation; unknown ones are refused later)."""
    loras = {lora.name.casefold(): lora for lora in model.loras}
    chosen = (loras.get(name.strip().casefold()) for name in names)
    return next((lora for lora in chosen if lora is not None and lora.few_step), None)


def _with_few_step_lora(model: ModelInfo, lora: LoraInfo) -> ModelInfo:
    """The model as a few-step LoRA makes it: the LoRA's steps, scheduler, guidance, ladder and schedulers."""
    return replace(
        model,
        default_steps=lora.default_steps or model.default_steps,
        default_scheduler=lora.default_scheduler or model.default_scheduler,
        default_guidance=model.default_guidance if lora.default_guidance is None else lora.default_guidance,
        compare_steps=lora.compare_steps or model.compare_steps,
        schedulers=model.schedulers_with(((lora.name, lora.default_weight),)),
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
    match = find_name(wanted, (*loaded, *unavailable, *limits.allowed_models))
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


def find_name(wanted: str, names: Iterable[str]) -> str | None:
    """The model name `wanted` means, in any capitalisation."""
    folded = wanted.casefold()
    return next((name for name in names if name.casefold() == folded), None)

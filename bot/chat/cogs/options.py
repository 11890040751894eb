"""What the cogs share: option choices and autocomplete, the server a command runs in, the database.

Not an extension (no `setup`): cogs import it, so that no cog imports another.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar, cast

import discord
from discord import app_commands

from bot.errors import UserFacingError
from bot.job_requests import MAX_PROMPT_CHARS
from bot.limits.server import EffectiveLimits
from inference.model_info import ModelInfo
from inference.requests import (
    MAX_GUIDANCE,
    MAX_LORA_WEIGHT,
    MAX_SEED,
    MAX_STRENGTH,
    MIN_GUIDANCE,
    MIN_LORA_WEIGHT,
    MIN_STRENGTH,
    SCHEDULER_NAMES,
)

if TYPE_CHECKING:
    from bot.chat.client import Stepgrid
    from bot.storage.database import Database

log = logging.getLogger(__name__)
MAX_CHOICES = 25  # Discord shows at most 25 autocomplete choices

# How the options the drawing commands share read in Discord (`drawing_command` describes those a command has).
SHARED_DESCRIPTIONS = {
    "prompt": "What to draw",
    "negative_prompt": "What to keep out of the image",
    "scheduler": "Sampler / scheduler (those the chosen model can run)",
    "model": "Which model draws it (this server's default when left out)",
    "guidance": "How closely to follow the prompt (classifier-free guidance scale)",
    "lora": "A LoRA of the chosen model (or write <lora:name:0.8> in the prompt)",
    "lora_weight": "How strongly the LoRA applies (default: its own, usually 1)",
}
# What the grid commands (/compare-steps, /compare-schedulers) say of their own seed and size.
GRID_DESCRIPTIONS = {
    "seed": "Seed shared by every cell (random when left out)",
    "size": "Width x height of each cell, e.g. 512 or 768x512 (multiples of 8)",
}

# The input image of a grid (/compare-steps, /compare-schedulers; /compare-strength needs one): every cell starts
# from it. Discord shows at most 100 characters of a description.
IMAGE_DESCRIPTIONS = {
    "image": "An image every cell starts from (img2img): PNG, JPEG or WebP; the grid keeps its layout",
    "strength": "With an image: how much to change it, 0 to 1 (default: the model's). At 0.6 of 30 steps, 18 run",
}

# The option types every generating command shares, declared once: discord.py reads each command's
# options (and their ranges) from its signature.
Prompt = app_commands.Range[str, 1, MAX_PROMPT_CHARS]
NegativePrompt = app_commands.Range[str, 0, MAX_PROMPT_CHARS]
Seed = app_commands.Range[int, 0, MAX_SEED]
Guidance = app_commands.Range[float, MIN_GUIDANCE, MAX_GUIDANCE]
ModelName = app_commands.Range[str, 1, 100]
LoraName = app_commands.Range[str, 1, 100]
LoraWeight = app_commands.Range[float, MIN_LORA_WEIGHT, MAX_LORA_WEIGHT]
Strength = app_commands.Range[float, MIN_STRENGTH, MAX_STRENGTH]

Command = TypeVar("Command", bound=Callable[..., Any])


def manage_server_only(command: Command) -> Command:
    """An admin command: hidden from members by default, refused without Manage Server, servers only."""
    command = app_commands.guild_only()(command)
    command = app_commands.checks.has_permissions(manage_guild=True)(command)
    return app_commands.default_permissions(manage_guild=True)(command)


def drawing_command(*, grid: bool = True, schedulers: bool = False, size: bool = True) -> Callable[[Command], Command]:
    """What every command that draws pictures shares: servers only, the shared description of each option it
    has (a `grid`'s seed, size and input image too), and autocomplete of the model, its LoRAs, the scheduler
    (a grid's list of `schedulers`) and the size (unless the size is the image's).

    Put it under the command's own `app_commands.describe`: a description given there wins over the shared one.
    """
    shared = {**SHARED_DESCRIPTIONS, **GRID_DESCRIPTIONS, **IMAGE_DESCRIPTIONS} if grid else SHARED_DESCRIPTIONS
    completions: dict[str, Any] = {"lora": lora_autocomplete, "model": model_autocomplete}
    if schedulers:
        completions["schedulers"] = schedulers_autocomplete
    else:
        completions["scheduler"] = scheduler_autocomplete
    if size:
        completions["size"] = size_autocomplete

    def decorate(command: Command) -> Command:
        options = inspect.signature(command).parameters
        described = app_commands.describe(**{name: text for name, text in shared.items() if name in options})
        return app_commands.guild_only()(app_commands.autocomplete(**completions)(described(command)))

    return decorate


SCHEDULER_CHOICES: list[app_commands.Choice[str]] = [
    app_commands.Choice(name=name, value=name) for name in SCHEDULER_NAMES
]
SIZE_SUGGESTIONS = ("512", "768x512", "512x768", "640", "768", "1024x576", "576x1024", "1024")


async def size_autocomplete(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
    """Common sizes matching what the user typed so far (any other WxH can still be typed)."""
    typed = current.strip().lower().replace("×", "x")
    return [
        app_commands.Choice(name=_size_label(size), value=size) for size in SIZE_SUGGESTIONS if size.startswith(typed)
    ]


def _size_label(size: str) -> str:
    width, _, height = size.partition("x")
    return f"{width} × {height or width}"


def model_label(model: ModelInfo, *, default: bool = False) -> str:
    """How a model reads in the model option: "sdxl-turbo · sdxl · 4 steps (default)"."""
    steps = f"{model.default_steps} step{'s' if model.default_steps != 1 else ''}"
    return f"{model.name} · {model.family} · {steps}{' (default)' if default else ''}"[:100]


def model_choices(
    current: str, limits: EffectiveLimits, loaded: Mapping[str, ModelInfo]
) -> list[app_commands.Choice[str]]:
    """The loaded models this server allows whose name contains what was typed, its default first."""
    typed = current.strip().casefold()
    names = [name for name in loaded if not limits.allowed_models or name in limits.allowed_models]
    names.sort(key=lambda name: name != limits.default_model)
    return [
        app_commands.Choice(name=model_label(loaded[name], default=name == limits.default_model), value=name)
        for name in names
        if typed in name.casefold() or typed in loaded[name].family
    ][:MAX_CHOICES]


def scheduler_choices(current: str, model: ModelInfo | None, limits: EffectiveLimits) -> list[app_commands.Choice[str]]:
    """The schedulers the model can run and this server allows, matching what was typed; the
    model's default first. Without a known model, every scheduler the server allows."""
    typed = current.strip().casefold()
    runnable = model.schedulers if model is not None else SCHEDULER_NAMES
    names = [name for name in runnable if name in limits.allowed_schedulers]
    if model is not None:
        names.sort(key=lambda name: name != model.default_scheduler)
    return [app_commands.Choice(name=name, value=name) for name in names if typed in name.casefold()][:MAX_CHOICES]


async def model_autocomplete(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
    """The `model` option: the loaded models this server allows, with family and default steps."""
    bot = cast("Stepgrid", interaction.client)
    limits = await bot.jobs.limits(interaction.guild_id)
    return model_choices(current, limits, bot.jobs.queue.models)


async def scheduler_autocomplete(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
    """The `scheduler` option: what the chosen model (or the server's default model) can run.

    Only a suggestion: the value is checked again when the command runs.
    """
    bot = cast("Stepgrid", interaction.client)
    limits = await bot.jobs.limits(interaction.guild_id)
    return scheduler_choices(current, _chosen_model(interaction, bot, limits), limits)


async def schedulers_autocomplete(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
    """A list of schedulers (`/compare-schedulers` rows): completes its last name from what the chosen
    model can run and the server allows."""
    bot = cast("Stepgrid", interaction.client)
    limits = await bot.jobs.limits(interaction.guild_id)
    model = _chosen_model(interaction, bot, limits)
    runnable = model.schedulers if model is not None else SCHEDULER_NAMES
    return list_completions(current, tuple(name for name in runnable if name in limits.allowed_schedulers))


def lora_choices(current: str, model: ModelInfo | None, limits: EffectiveLimits) -> list[app_commands.Choice[str]]:
    """The chosen model's LoRAs this server allows whose name (or trigger words) contain what was typed;
    each labelled with its weight, few-step settings and trigger words. Discord shows at most 25."""
    if model is None:
        return []
    typed = current.strip().casefold()
    choices = []
    for lora in model.loras:
        if not limits.lora_allowed(lora.name):
            continue
        if typed not in lora.name.casefold() and not any(typed in word.casefold() for word in lora.triggers):
            continue
        few = f" · few-step: {lora.default_steps} steps, {lora.default_scheduler}" if lora.few_step else ""
        triggers = f" · {', '.join(lora.triggers)}" if lora.triggers else ""
        label = f"{lora.name} · weight {lora.default_weight:g}{few}{triggers}"[:100]
        choices.append(app_commands.Choice(name=label, value=lora.name))
    return choices[:MAX_CHOICES]


async def lora_autocomplete(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
    """The `lora` option: the chosen model's LoRAs this server allows."""
    bot = cast("Stepgrid", interaction.client)
    limits = await bot.jobs.limits(interaction.guild_id)
    return lora_choices(current, _chosen_model(interaction, bot, limits), limits)


async def registry_loras_autocomplete(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
    """The operator's LoRAs, of every model (for `/limits-set`), completing the last name of a list."""
    bot = cast("Stepgrid", interaction.client)
    names = (lora.name for spec in bot.settings.model_specs() for lora in spec.loras)
    return list_completions(current, ("none", *dict.fromkeys(names)))


def _chosen_model(interaction: discord.Interaction, bot: Stepgrid, limits: EffectiveLimits) -> ModelInfo | None:
    """The model the command's `model` option names so far (the server's default when left out or not
    usable yet), or None while no model is known."""
    chosen = getattr(interaction.namespace, "model", None)
    try:
        return bot.jobs.model_for(chosen if isinstance(chosen, str) else None, limits)
    except UserFacingError:  # a model being typed or not allowed: the command will say so
        return bot.jobs.model_for(None, limits) if chosen else None


def list_completions(current: str, names: tuple[str, ...]) -> list[app_commands.Choice[str]]:
    """Complete the last item of a comma-separated list from `names`."""
    head, _, last = current.rpartition(",")
    chosen = [part.strip() for part in head.split(",") if part.strip()]
    prefix = ", ".join(chosen) + ", " if chosen else ""
    typed = last.strip().casefold()
    options = [name for name in names if name not in chosen and name.casefold().startswith(typed)]
    return [app_commands.Choice(name=(prefix + name)[:100], value=(prefix + name)[:100]) for name in options][
        :MAX_CHOICES
    ]


async def registry_models_autocomplete(
    interaction: discord.Interaction, current: str
) -> list[app_commands.Choice[str]]:
    """The operator's models (for `/limits-set`), completing the last name of a list."""
    bot = cast("Stepgrid", interaction.client)
    return list_completions(current, tuple(spec.name for spec in bot.settings.model_specs()))


async def allowed_schedulers_autocomplete(
    interaction: discord.Interaction, current: str
) -> list[app_commands.Choice[str]]:
    """Complete the last name of a comma-separated scheduler list."""
    return list_completions(current, SCHEDULER_NAMES)


class NoDatabase(UserFacingError):
    """The bot runs without a database, so there are no per-server limits or usage to show or change."""

    def __init__(self) -> None:
        super().__init__("This bot runs without a database, so its limits are the operator's and can't be changed.")


def require_database(bot: Stepgrid) -> Database:
    """The bot's database, or a NoDatabase refusal."""
    if bot.database is None:
        raise NoDatabase()
    return bot.database


def guild_id_of(interaction: discord.Interaction) -> int:
    """The server the interaction came from (every command that needs one is guild-only)."""
    if interaction.guild_id is None:
        raise app_commands.NoPrivateMessage()
    return interaction.guild_id

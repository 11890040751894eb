"""The option helpers the cogs share: autocomplete, the server a command runs in, the database."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import cast

import discord

from bot.chat.cogs.options import (
    model_autocomplete,
    model_choices,
    scheduler_autocomplete,
    scheduler_choices,
    schedulers_autocomplete,
    size_autocomplete,
)
from bot.config import Settings
from bot.limits.server import EffectiveLimits
from tests.bot.fakes import FLUX, REGISTRY, SD15, TURBO, model_harness


async def test_size_autocomplete_filters_common_sizes() -> None:
    choices = await size_autocomplete(cast(discord.Interaction, None), "76")
    assert [choice.value for choice in choices] == ["768x512", "768"]
    assert choices[0].name == "768 × 512"


# --- the model and its schedulers ------------------------------------------------------------------

LIMITS = EffectiveLimits.combine(None, Settings(_env_file=None, model=REGISTRY))  # type: ignore[call-arg]
LOADED = {model.name: model for model in (SD15, TURBO, FLUX)}


def test_model_choices_show_family_and_default_steps_the_default_first() -> None:
    limits = dataclasses.replace(LIMITS, default_model="flux")
    choices = model_choices("", limits, LOADED)
    assert [choice.value for choice in choices] == ["flux", "sd15", "sdxl-turbo"]
    assert choices[0].name == "flux · flux · 28 steps (default)"
    assert choices[2].name == "sdxl-turbo · sdxl · 4 steps"


def test_model_choices_offer_only_loaded_models_the_server_allows_matching_what_was_typed() -> None:
    limits = dataclasses.replace(LIMITS, allowed_models=("sd15", "sdxl-turbo"))
    assert [c.value for c in model_choices("", limits, LOADED)] == ["sd15", "sdxl-turbo"]
    assert [c.value for c in model_choices("TURBO", limits, LOADED)] == ["sdxl-turbo"]
    assert [c.value for c in model_choices("", LIMITS, {"sd15": SD15})] == ["sd15"]  # the others failed to load


def test_scheduler_choices_are_what_the_model_can_run_and_the_server_allows() -> None:
    assert [c.value for c in scheduler_choices("", FLUX, LIMITS)] == ["Euler", "Heun", "DPM++ 2M", "UniPC"]
    limits = dataclasses.replace(LIMITS, allowed_schedulers=("Euler a", "Heun", "DDIM"))
    assert [c.value for c in scheduler_choices("", SD15, limits)] == ["Euler a", "Heun", "DDIM"]
    assert [c.value for c in scheduler_choices("dpm", TURBO, LIMITS)] == ["DPM++ 2M"]
    assert len(scheduler_choices("", None, LIMITS)) == len(LIMITS.allowed_schedulers)


async def scheduler_autocomplete_for(model: str | None, typed: str = "") -> list[str]:
    harness = model_harness()
    bot = SimpleNamespace(jobs=harness.service)
    interaction = SimpleNamespace(client=bot, guild_id=None, namespace=SimpleNamespace(model=model))
    choices = await scheduler_autocomplete(cast(discord.Interaction, interaction), typed)
    return [choice.value for choice in choices]


async def test_scheduler_autocomplete_follows_the_model_chosen_in_the_same_command() -> None:
    assert await scheduler_autocomplete_for("flux") == ["Euler", "Heun", "DPM++ 2M", "UniPC"]
    assert "DDIM" in await scheduler_autocomplete_for(None)  # the default model, sd15
    # A model still being typed (or not allowed): the default model's schedulers, not an error.
    assert await scheduler_autocomplete_for("fl") == await scheduler_autocomplete_for(None)


async def test_a_scheduler_list_completes_its_last_name_from_what_the_chosen_model_can_run() -> None:
    harness = model_harness()
    interaction = SimpleNamespace(
        client=SimpleNamespace(jobs=harness.service), guild_id=None, namespace=SimpleNamespace(model="flux")
    )
    choices = await schedulers_autocomplete(cast(discord.Interaction, interaction), "Euler, h")
    assert [choice.value for choice in choices] == ["Euler, Heun"]


async def test_model_autocomplete_asks_the_server_limits_and_the_loaded_models() -> None:
    harness = model_harness()
    interaction = SimpleNamespace(client=SimpleNamespace(jobs=harness.service), guild_id=None)
    choices = await model_autocomplete(cast(discord.Interaction, interaction), "s")
    assert [choice.value for choice in choices] == ["sd15", "sdxl-turbo"]

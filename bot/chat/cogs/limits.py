"""`/limits`: what a server allows, and the admin commands that change it.

Discord hides a command by its top-level `default_member_permissions`, which covers every
subcommand under it. So the commands anyone may use live under `/limits` (show, history) and the
Manage Server ones are top-level commands of their own (`/limits-set`, `/limits-reset`): hidden
from members by `default_permissions`, and checked again at run time, because a server's
Integrations settings can hand a hidden command to anyone.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.chat.cogs.options import (
    SCHEDULER_CHOICES,
    ModelName,
    allowed_schedulers_autocomplete,
    guild_id_of,
    manage_server_only,
    registry_loras_autocomplete,
    registry_models_autocomplete,
    require_database,
)
from bot.config import MIN_INPUT_MEGAPIXELS
from bot.errors import UserFacingError
from bot.formatting import format_amount
from bot.limits.server import (
    FLAGGED_POLICIES,
    LIMIT_FIELDS,
    LIMIT_LABELS,
    EffectiveLimits,
    InvalidLimit,
    ServerLimits,
)
from bot.replies.messages import COLOUR
from inference.requests import MIN_COMPARE_CELLS, MIN_SIZE, MIN_STEPS, SCHEDULER_NAMES

if TYPE_CHECKING:
    from bot.chat.client import Stepgrid
    from bot.storage.models import LimitsChange

log = logging.getLogger(__name__)

HISTORY_SHOWN = 10
# The `/limits-set` options whose Discord names are shorter than the settings they change; in the
# code each option has its setting's name (`app_commands.rename`), and errors name the option.
OPTION_NAMES = {
    "max_compute_per_request": "compute_budget",
    "daily_steps_per_user": "daily_steps",
    "max_concurrent_jobs_per_user": "concurrent_jobs",
}


def option_name(field: str) -> str:
    """What `/limits-set` calls the option that changes `field`."""
    return OPTION_NAMES.get(field, field)


FLAGGED_CHOICES = [app_commands.Choice(name=words, value=name) for name, words in FLAGGED_POLICIES.items()]


RESET_CHOICES = [app_commands.Choice(name=LIMIT_LABELS[name], value=name) for name in LIMIT_FIELDS]


def display_value(name: str, value: Any) -> str:
    """A limit's value as `/limits show` prints it."""
    if name == "model_max_steps":
        return ", ".join(f"{model}: {steps:,}" for model, steps in value) or "none"
    if name == "allowed_models":
        return ", ".join(value) or "all"
    if name == "allowed_loras":
        return "all" if value is None else ", ".join(value) or "none"
    if name == "banned_words":
        return f"{len(value)} word(s) (not listed)" if value else "none"
    if name == "flagged_images":
        return FLAGGED_POLICIES.get(value, str(value))
    if name == "image_input":
        return "on" if value else "off: members can't attach an image to start from"
    if name == "learned_steps":
        return "on: /imagine without steps runs where this server's grids settle" if value else "off"
    if name == "max_input_megapixels":
        return f"{value:g} megapixels"
    if isinstance(value, tuple):
        return ", ".join(value) if len(value) < len(SCHEDULER_NAMES) else "all"
    if name in ("max_image_size", "max_upscale_size"):
        return f"{value}×{value}"
    if name == "max_compute_per_request":
        return f"{format_amount(value)} pixel-steps (e.g. 512×512 × {value // (512 * 512):,} steps)"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def source_of(name: str, server: ServerLimits, effective: EffectiveLimits) -> str:
    """Whose value applies: the server's own, or the operator's (unset, or capped by the operator)."""
    if name == "model_max_steps":
        return _source_of_model_ceilings(server, effective)
    own = getattr(server, name)
    if name == "max_upscale_size" and own is None and effective.max_upscale_size == effective.max_image_size:
        return "the max image size"
    if own is None:
        return "operator"
    return "server" if own == getattr(effective, name) else "operator (caps the server's value)"


def _source_of_model_ceilings(server: ServerLimits, effective: EffectiveLimits) -> str:
    """Each model's ceiling is the tightest of the server's own for it, the server's max steps and the
    operator's (the registry's ceiling for that model, or the operator's max steps)."""
    own = dict(server.model_max_steps or ())
    sources = set()
    for model, steps in effective.model_max_steps:
        if model in own:
            sources.add("server" if own[model] == steps else "operator (caps the server's value)")
        elif steps == effective.max_steps:
            sources.add(source_of("max_steps", server, effective))
        else:
            sources.add("operator")
    if len(sources) == 1:
        return sources.pop()
    if "server" in sources:
        return "server and operator"
    return "operator (caps the server's value)" if "operator (caps the server's value)" in sources else "operator"


def limits_embed(server: ServerLimits, effective: EffectiveLimits, history: list[LimitsChange]) -> discord.Embed:
    """Every effective limit with whose value it is, and who changed the limits last."""
    embed = discord.Embed(
        title="Limits in this server",
        description=(
            "*server*: set with `/limits-set`; *operator*: the bot operator's value (servers can only tighten it)."
        ),
        colour=COLOUR,
    )
    for name in LIMIT_FIELDS:
        value = getattr(effective, name)
        embed.add_field(
            name=LIMIT_LABELS[name], value=f"{display_value(name, value)}\n*{source_of(name, server, effective)}*"
        )
    if history:
        last = history[0]
        embed.set_footer(text=f"Last changed by user {last.user_id}; see /limits history")
        embed.timestamp = last.changed_at
    return embed


def change_line(change: LimitsChange) -> str:
    """One audit row: when, who, what changed."""
    when = discord.utils.format_dt(change.changed_at, "f")
    old = "operator's value" if change.old_value is None else _plain(change.field, change.old_value)
    new = "operator's value" if change.new_value is None else _plain(change.field, change.new_value)
    return f"{when} <@{change.user_id}>: **{LIMIT_LABELS.get(change.field, change.field)}** {old} → {new}"


def _plain(name: str, value: Any) -> str:
    if isinstance(value, dict):  # per-model ceilings
        return ", ".join(f"{model}={steps}" for model, steps in value.items())
    if name == "banned_words":
        return f"{len(value)} word(s)"
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return f"{value:,}" if isinstance(value, int) else str(value)


class Limits(commands.Cog):
    """`/limits show`, `/limits history`, `/limits-set` and `/limits-reset`."""

    limits = app_commands.Group(name="limits", description="What this server allows", guild_only=True)

    def __init__(self, bot: Stepgrid) -> None:
        self.bot = bot

    async def _current(self, guild_id: int) -> tuple[ServerLimits, EffectiveLimits]:
        database = require_database(self.bot)
        server = await database.server_limits.get_limits(guild_id)
        return server, EffectiveLimits.combine(server, self.bot.settings)

    @limits.command(name="show", description="Show this server's limits and defaults.")
    async def show(self, interaction: discord.Interaction) -> None:
        guild_id = guild_id_of(interaction)
        server, effective = await self._current(guild_id)
        history = await require_database(self.bot).server_limits.limits_history(guild_id, limit=1)
        await interaction.response.send_message(embed=limits_embed(server, effective, history), ephemeral=True)

    @limits.command(name="history", description="Show recent changes to this server's limits.")
    async def history(self, interaction: discord.Interaction) -> None:
        changes = await require_database(self.bot).server_limits.limits_history(
            guild_id_of(interaction), limit=HISTORY_SHOWN
        )
        text = "\n".join(change_line(change) for change in changes) or "No changes yet: the operator's limits apply."
        embed = discord.Embed(title="Recent limit changes", description=text[:4000], colour=COLOUR)
        await interaction.response.send_message(
            embed=embed, ephemeral=True, allowed_mentions=discord.AllowedMentions.none()
        )

    @app_commands.command(name="limits-set", description="Change this server's limits (Manage Server).")
    @app_commands.describe(
        max_steps="Most denoising steps per image",
        default_steps="Steps when a member leaves them out",
        allowed_schedulers="Comma-separated scheduler names members may use",
        default_scheduler="Scheduler when a member leaves it out",
        max_grid_cells="Most cells in a comparison grid (/compare-steps, /compare-schedulers)",
        max_image_size="Largest width or height in pixels",
        max_compute_per_request="Most width × height × total steps per request (grid cells and film frames count)",
        daily_steps_per_user="Steps each member may run per day (resets at midnight UTC)",
        max_concurrent_jobs_per_user="Jobs each member may have queued or running at once",
        banned_words="Comma-separated words or phrases refused in prompts (replaces the list)",
        allowed_models="Comma-separated models members may choose (of the operator's)",
        default_model="Model when a member leaves it out",
        model_max_steps='Step ceilings per model, e.g. "sdxl-turbo=8, flux=28" (replaces them all)',
        flagged_images="Where pictures the image checker flags may be posted (elsewhere they are withheld)",
        allowed_loras="Comma-separated LoRAs members may choose (of the operator's), or none",
        image_input="Whether members may attach an image to start from (img2img); Vary and Upscale still work",
        max_input_megapixels="Most pixels an attached image may have, in millions (a 12 MP photo is 4000×3000)",
        max_upscale_size="Largest width or height of an Upscale ×2 result (default: the max image size)",
        learned_steps="Whether /imagine without steps runs where this server's grids settle (see /sweet-spots)",
    )
    @app_commands.rename(**OPTION_NAMES)
    @app_commands.choices(default_scheduler=SCHEDULER_CHOICES, flagged_images=FLAGGED_CHOICES)
    @app_commands.autocomplete(
        allowed_schedulers=allowed_schedulers_autocomplete,
        allowed_models=registry_models_autocomplete,
        default_model=registry_models_autocomplete,
        allowed_loras=registry_loras_autocomplete,
    )
    @manage_server_only
    async def set_limits(
        self,
        interaction: discord.Interaction,
        max_steps: app_commands.Range[int, MIN_STEPS, None] | None = None,
        default_steps: app_commands.Range[int, MIN_STEPS, None] | None = None,
        allowed_schedulers: str | None = None,
        default_scheduler: str | None = None,
        max_grid_cells: app_commands.Range[int, MIN_COMPARE_CELLS, None] | None = None,
        max_image_size: app_commands.Range[int, MIN_SIZE, None] | None = None,
        max_compute_per_request: app_commands.Range[int, 1, None] | None = None,
        daily_steps_per_user: app_commands.Range[int, 1, None] | None = None,
        max_concurrent_jobs_per_user: app_commands.Range[int, 1, None] | None = None,
        banned_words: str | None = None,
        allowed_models: app_commands.Range[str, 1, 1000] | None = None,
        default_model: ModelName | None = None,
        model_max_steps: app_commands.Range[str, 1, 1000] | None = None,
        flagged_images: str | None = None,
        allowed_loras: app_commands.Range[str, 1, 1000] | None = None,
        image_input: bool | None = None,
        max_input_megapixels: app_commands.Range[float, MIN_INPUT_MEGAPIXELS, None] | None = None,
        max_upscale_size: app_commands.Range[int, MIN_SIZE, None] | None = None,
        learned_steps: bool | None = None,
    ) -> None:
        given = {
            "max_steps": max_steps,
            "default_steps": default_steps,
            "allowed_schedulers": allowed_schedulers,
            "default_scheduler": default_scheduler,
            "max_grid_cells": max_grid_cells,
            "max_image_size": max_image_size,
            "max_compute_per_request": max_compute_per_request,
            "daily_steps_per_user": daily_steps_per_user,
            "max_concurrent_jobs_per_user": max_concurrent_jobs_per_user,
            "banned_words": banned_words,
            "allowed_models": allowed_models,
            "default_model": default_model,
            "model_max_steps": model_max_steps,
            "flagged_images": flagged_images,
            "allowed_loras": allowed_loras,
            "image_input": image_input,
            "max_input_megapixels": max_input_megapixels,
            "max_upscale_size": max_upscale_size,
            "learned_steps": learned_steps,
        }
        changes = {name: value for name, value in given.items() if value is not None}
        if not changes:
            raise UserFacingError("Give at least one setting to change; `/limits-reset` puts them back.")
        guild_id = guild_id_of(interaction)
        database = require_database(self.bot)
        before = await database.server_limits.get_limits(guild_id)
        try:
            after = await database.server_limits.set_limits(guild_id, interaction.user.id, **changes)
        except InvalidLimit as error:
            raise error.renamed(option_name(error.field)) from None
        log.info("limits of guild %s changed by user %s: %s", guild_id, interaction.user.id, sorted(changes))
        await self._answer_change(interaction, before, after, "Limits updated.")

    @app_commands.command(
        name="limits-reset", description="Put this server's limits back to the operator's (Manage Server)."
    )
    @app_commands.describe(setting="The one setting to reset (all of them when left out)")
    @app_commands.choices(setting=RESET_CHOICES)
    @manage_server_only
    async def reset_limits(self, interaction: discord.Interaction, setting: str | None = None) -> None:
        guild_id = guild_id_of(interaction)
        database = require_database(self.bot)
        before = await database.server_limits.get_limits(guild_id)
        after = await database.server_limits.reset_limits(
            guild_id, interaction.user.id, None if setting is None else [setting]
        )
        log.info("limits of guild %s reset by user %s: %s", guild_id, interaction.user.id, setting or "all")
        await self._answer_change(interaction, before, after, "Limits reset to the operator's values.")

    async def _answer_change(
        self, interaction: discord.Interaction, before: ServerLimits, after: ServerLimits, headline: str
    ) -> None:
        effective = EffectiveLimits.combine(after, self.bot.settings)
        changed = [name for name in LIMIT_FIELDS if getattr(before, name) != getattr(after, name)]
        lines = [
            f"**{LIMIT_LABELS[name]}**: {display_value(name, getattr(effective, name))} "
            f"({source_of(name, after, effective)})"
            for name in changed
        ]
        text = headline if lines else "Nothing changed: those are the values already in place."
        if lines:
            text += "\n" + "\n".join(lines)
        await interaction.response.send_message(text, ephemeral=True)


async def setup(bot: Stepgrid) -> None:
    await bot.add_cog(Limits(bot))

"""What the cogs share: option choices and autocomplete, the server a command runs in, the database.

Not an extension (no `setup`): cogs import it, so that no cog imports another.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands

from bot.errors import UserFacingError
from inference.protocol import SCHEDULER_NAMES

if TYPE_CHECKING:
    from bot.client import Stepgrid
    from bot.db import Database

# How the options /imagine and /compare-steps share read in Discord.
SHARED_DESCRIPTIONS = {
    "prompt": "What to draw",
    "negative_prompt": "What to keep out of the image",
    "scheduler": "Sampler / scheduler",
    "guidance": "How closely to follow the prompt (classifier-free guidance scale)",
}
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


async def allowed_schedulers_autocomplete(
    interaction: discord.Interaction, current: str
) -> list[app_commands.Choice[str]]:
    """Complete the last name of a comma-separated scheduler list."""
    head, _, last = current.rpartition(",")
    chosen = [part.strip() for part in head.split(",") if part.strip()]
    prefix = ", ".join(chosen) + ", " if chosen else ""
    typed = last.strip().casefold()
    options = [name for name in SCHEDULER_NAMES if name not in chosen and name.casefold().startswith(typed)]
    return [app_commands.Choice(name=(prefix + name)[:100], value=(prefix + name)[:100]) for name in options][:25]


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

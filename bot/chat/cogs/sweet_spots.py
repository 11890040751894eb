"""`/sweet-spots`: where this server's grids settle, per model × scheduler (its own memory, bot.storage.sweet_spots).

Private by default, like `/limits show` and `/usage`; `share: True` posts the table in the channel.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.chat.cogs.options import guild_id_of, require_database
from bot.formatting import counted
from bot.limits.server import EffectiveLimits
from bot.replies.messages import COLOUR
from bot.storage.sweet_spots import SweetSpot

if TYPE_CHECKING:
    from bot.chat.client import Stepgrid

MAX_ROWS = 25
NAME_WIDTH = 24
EMPTY = (
    "No grids remembered in this server yet: each `/compare-steps` or `/compare-schedulers` grid adds where its "
    "rows settle."
)


def sweet_spots_table(spots: Sequence[SweetSpot]) -> str:
    """The server's sweet spots as a fixed-width table: model, scheduler, the middle settle step (and the range
    of the settled rows), grids, how many did not settle."""
    lines = [f"{'model':<{NAME_WIDTH}} {'scheduler':<16} {'settles at':<14} {'grids':>5} {'not settled':>11}"]
    for spot in spots[:MAX_ROWS]:
        if spot.median is None:
            settles = "not settled"
        elif spot.lowest == spot.highest:
            settles = f"{spot.median}"
        else:
            settles = f"{spot.median} ({spot.lowest}–{spot.highest})"
        lines.append(
            f"{_clip(spot.model, NAME_WIDTH):<{NAME_WIDTH}} {_clip(spot.scheduler, 16):<16} {settles:<14} "
            f"{spot.grids:>5} {spot.not_settled:>11}"
        )
    more = f"\n…and {len(spots) - MAX_ROWS} more" if len(spots) > MAX_ROWS else ""
    return "```\n" + "\n".join(lines) + "\n```" + more


def learned_line(limits: EffectiveLimits) -> str:
    """Whether /imagine uses the table here, and from how many grids."""
    grids = counted(limits.learned_steps_min_grids, "grid")
    if limits.learned_steps:
        return f"Learned steps are on: /imagine without steps runs the middle settle step of at least {grids}."
    return f"Learned steps are off (`/limits-set learned_steps: True` lets /imagine use them, from {grids} or more)."


def sweet_spots_embed(spots: Sequence[SweetSpot], limits: EffectiveLimits) -> discord.Embed:
    """The table (or how to fill it), what the numbers are, and whether /imagine uses them."""
    if not spots:
        return discord.Embed(title="Sweet spots in this server", description=EMPTY, colour=COLOUR)
    embed = discord.Embed(title="Sweet spots in this server", description=sweet_spots_table(spots), colour=COLOUR)
    embed.add_field(
        name="What the numbers are",
        value=(
            "Each grid row (a scheduler's step ladder) settles at the first step count after which every change "
            "stays under 2%. *settles at*: the middle of this server's grids (a row that did not settle counts "
            "above every step count), with the range of those that settled."
        ),
        inline=False,
    )
    embed.set_footer(text=learned_line(limits))
    return embed


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


class SweetSpots(commands.Cog):
    """`/sweet-spots`."""

    def __init__(self, bot: Stepgrid) -> None:
        self.bot = bot

    @app_commands.command(name="sweet-spots", description="Where this server's grids settle, per model and scheduler.")
    @app_commands.describe(share="Post the table in the channel (default: only you see it)")
    @app_commands.guild_only()
    async def sweet_spots(self, interaction: discord.Interaction, share: bool = False) -> None:
        guild_id = guild_id_of(interaction)
        spots = await require_database(self.bot).sweet_spots.for_server(guild_id)
        limits = await self.bot.jobs.limits(guild_id)
        await interaction.response.send_message(embed=sweet_spots_embed(spots, limits), ephemeral=not share)


async def setup(bot: Stepgrid) -> None:
    await bot.add_cog(SweetSpots(bot))

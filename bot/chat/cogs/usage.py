"""`/usage` (a member's own figures) and `/usage-server` (the server's, for Manage Server).

`/usage-server` is a top-level command rather than `/usage server` because Discord hides commands
by their top-level `default_member_permissions`, and a command with subcommands can't be run bare.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.chat.cogs.options import guild_id_of, manage_server_only, require_database
from bot.errors import InvalidOption
from bot.formatting import format_duration
from bot.limits.server import EffectiveLimits
from bot.ops.usage_report import (
    CHART_DAYS,
    USAGE_PERIODS,
    MemberUsage,
    kind_lines,
    member_usage,
    period_start,
    server_chart,
)
from bot.replies.messages import COLOUR
from bot.storage.usage import ServerUsage
from inference.clipping import echo

if TYPE_CHECKING:
    from bot.chat.client import Stepgrid

CHART_FILE = "usage-chart.png"
PERIOD_CHOICES = [app_commands.Choice(name=name, value=name) for name in USAGE_PERIODS]
DEFAULT_PERIOD = "7 days"


def member_usage_embed(usage: MemberUsage, *, now_resets_in: str) -> discord.Embed:
    """A member's own figures and what is left of today's quota."""
    embed = discord.Embed(title="Your usage in this server", colour=COLOUR)
    embed.add_field(name="Images", value=f"{usage.images:,}")
    embed.add_field(name="Jobs", value=f"{usage.jobs:,}")
    embed.add_field(name="Steps run", value=f"{usage.steps:,}")
    embed.add_field(name="GPU time", value=f"{usage.gpu_seconds:,.1f} s")
    embed.add_field(
        name="Today's quota",
        value=(
            f"{usage.steps_today:,} of {usage.daily_quota:,} steps used; **{usage.quota_remaining:,} left**. "
            "Steps that ran count, also in failed and cancelled jobs.\n"
            f"Resets {discord.utils.format_dt(usage.resets_at, 'R')} "
            f"(in {now_resets_in}, {usage.resets_at:%H:%M} UTC)."
        ),
        inline=False,
    )
    if usage.by_kind:
        embed.add_field(name="By kind", value=kind_lines(usage.by_kind)[:1024], inline=False)
    return embed


def server_usage_embed(usage: ServerUsage, period: str) -> discord.Embed:
    """A server's totals, top members, top schedulers and models over a period."""
    embed = discord.Embed(title=f"Server usage: {period}", colour=COLOUR)
    embed.add_field(name="Jobs", value=f"{usage.jobs:,} ({usage.failed:,} failed, {usage.cancelled:,} cancelled)")
    embed.add_field(name="Images", value=f"{usage.images:,}")
    embed.add_field(name="Withheld", value=f"{usage.withheld:,} flagged picture(s) not posted where asked")
    embed.add_field(name="Steps run", value=f"{usage.steps:,}")
    embed.add_field(name="GPU time", value=f"{usage.gpu_seconds:,.1f} s")
    embed.add_field(name="Members", value=f"{usage.members:,}")
    users = "\n".join(
        f"{rank}. <@{user.user_id}>: {user.steps:,} steps, {user.images:,} images, {user.gpu_seconds:,.1f} s"
        for rank, user in enumerate(usage.top_users, start=1)
    )
    schedulers = "\n".join(
        f"{rank}. {row.scheduler}: {row.jobs:,} jobs, {row.steps:,} steps"
        for rank, row in enumerate(usage.top_schedulers, start=1)
    )
    embed.add_field(name="Top members", value=users or "nobody yet", inline=False)
    embed.add_field(name="By kind", value=kind_lines(usage.by_kind)[:1024] or "none yet", inline=False)
    models = "\n".join(
        f"{rank}. {row.model or '— (before models were recorded)'}: {row.jobs:,} jobs, {row.steps:,} steps, "
        f"{row.gpu_seconds:,.1f} s"
        for rank, row in enumerate(usage.top_models, start=1)
    )
    embed.add_field(name="Top schedulers", value=schedulers or "none yet", inline=False)
    embed.add_field(name="Models", value=models or "none yet", inline=False)
    if usage.top_loras:
        loras = "\n".join(
            f"{rank}. {row.loras}: {row.jobs:,} jobs, {row.steps:,} steps"
            for rank, row in enumerate(usage.top_loras, start=1)
        )
        embed.add_field(name="LoRAs", value=loras[:1024], inline=False)
    return embed


class Usage(commands.Cog):
    """`/usage` and `/usage-server`."""

    def __init__(self, bot: Stepgrid) -> None:
        self.bot = bot

    @app_commands.command(name="usage", description="Your images, steps, GPU time and what is left of today's quota.")
    @app_commands.guild_only()
    async def usage(self, interaction: discord.Interaction) -> None:
        guild_id = guild_id_of(interaction)
        database = require_database(self.bot)
        limits = EffectiveLimits.combine(await database.server_limits.get_limits(guild_id), self.bot.settings)
        now = database.clock()
        figures = await member_usage(database.ledger, guild_id, interaction.user.id, limits, now=now)
        embed = member_usage_embed(figures, now_resets_in=format_duration(figures.resets_at - now))
        await interaction.response.send_message(embed=embed, ephemeral=True)

    @app_commands.command(
        name="usage-server", description="This server's usage: totals, top members, schedulers, models."
    )
    @app_commands.describe(period="How far back to count (default: 7 days)")
    @app_commands.choices(period=PERIOD_CHOICES)
    @manage_server_only
    async def usage_server(self, interaction: discord.Interaction, period: str = DEFAULT_PERIOD) -> None:
        guild_id = guild_id_of(interaction)
        if period not in USAGE_PERIODS:  # Discord offers only the choices, but a client may send anything
            raise InvalidOption(f"Unknown period {echo(period)}; choose one of: {', '.join(USAGE_PERIODS)}.")
        database = require_database(self.bot)
        now = database.clock()
        figures = await database.ledger.server_usage(guild_id, since=period_start(period, now), until=now)
        embed = server_usage_embed(figures, period)
        chart = discord.File(io.BytesIO(await server_chart(database.ledger, guild_id, now=now)), filename=CHART_FILE)
        embed.set_image(url=f"attachment://{CHART_FILE}")
        embed.set_footer(text=f"The chart: images per day over the last {CHART_DAYS} days, by scheduler.")
        await interaction.response.send_message(
            embed=embed, file=chart, ephemeral=True, allowed_mentions=discord.AllowedMentions.none()
        )


async def setup(bot: Stepgrid) -> None:
    await bot.add_cog(Usage(bot))

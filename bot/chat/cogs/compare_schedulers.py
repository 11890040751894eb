"""`/compare-schedulers`: one prompt and seed as a grid of schedulers (rows) × step counts (columns)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.chat.cogs import options as shared
from bot.job_requests import MAX_SCHEDULER_LIST_CHARS, MAX_STEP_LIST_CHARS, RequestOptions

if TYPE_CHECKING:
    from bot.chat.client import Stepgrid


class CompareSchedulers(commands.Cog):
    """The `/compare-schedulers` command."""

    def __init__(self, bot: Stepgrid) -> None:
        self.bot = bot

    @app_commands.command(
        name="compare-schedulers",
        description="Render one prompt and seed with several schedulers at several step counts, as one grid.",
    )
    @app_commands.describe(
        schedulers="Rows: 2 to 6 schedulers separated by commas (default: a varied set the model can run)",
        steps="Columns: step counts separated by commas (default: the model's ladder, trimmed to fit the grid)",
    )
    @shared.drawing_command(schedulers=True)
    async def compare_schedulers(
        self,
        interaction: discord.Interaction,
        prompt: shared.Prompt,
        schedulers: app_commands.Range[str, 1, MAX_SCHEDULER_LIST_CHARS] | None = None,
        steps: app_commands.Range[str, 1, MAX_STEP_LIST_CHARS] | None = None,
        seed: shared.Seed | None = None,
        negative_prompt: shared.NegativePrompt | None = None,
        guidance: shared.Guidance | None = None,
        size: str | None = None,
        model: shared.ModelName | None = None,
        lora: shared.LoraName | None = None,
        lora_weight: shared.LoraWeight | None = None,
        image: discord.Attachment | None = None,
        strength: shared.Strength | None = None,
    ) -> None:
        options = RequestOptions(
            prompt,
            negative_prompt,
            seed=seed,
            guidance=guidance,
            size=size,
            compare_steps=steps,
            model=model,
            schedulers=schedulers,
            scheduler_grid=True,
            lora=lora,
            lora_weight=lora_weight,
            strength=strength,
        )
        await self.bot.jobs.start_command(interaction, options, origin="compare-schedulers", attachment=image)


async def setup(bot: Stepgrid) -> None:
    await bot.add_cog(CompareSchedulers(bot))

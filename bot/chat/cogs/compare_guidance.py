"""`/compare-guidance`: one prompt and seed as a grid of guidance values (columns) × step counts (rows)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.chat.cogs import options as shared
from bot.job_requests import MAX_GUIDANCE_LIST_CHARS, MAX_STEP_LIST_CHARS, RequestOptions

if TYPE_CHECKING:
    from bot.chat.client import Stepgrid


class CompareGuidance(commands.Cog):
    """The `/compare-guidance` command."""

    def __init__(self, bot: Stepgrid) -> None:
        self.bot = bot

    @app_commands.command(
        name="compare-guidance",
        description="Render one prompt and seed at several guidance values (and step counts), as one grid.",
    )
    @app_commands.describe(
        guidance="Columns: guidance values separated by commas, e.g. 1,3,5,7.5 (default: a ladder around the model's)",
        steps="Rows: step counts separated by commas, 1 to 6 (default: the model's own steps)",
    )
    @shared.drawing_command()
    async def compare_guidance(
        self,
        interaction: discord.Interaction,
        prompt: shared.Prompt,
        guidance: app_commands.Range[str, 1, MAX_GUIDANCE_LIST_CHARS] | None = None,
        steps: app_commands.Range[str, 1, MAX_STEP_LIST_CHARS] | None = None,
        scheduler: str | None = None,
        seed: shared.Seed | None = None,
        negative_prompt: shared.NegativePrompt | None = None,
        size: str | None = None,
        model: shared.ModelName | None = None,
        lora: shared.LoraName | None = None,
        lora_weight: shared.LoraWeight | None = None,
    ) -> None:
        options = RequestOptions(
            prompt,
            negative_prompt,
            scheduler,
            seed,
            size=size,
            compare_steps=steps,
            model=model,
            guidances=guidance,
            guidance_grid=True,
            lora=lora,
            lora_weight=lora_weight,
        )
        await self.bot.jobs.start_command(interaction, options, origin="compare-guidance")


async def setup(bot: Stepgrid) -> None:
    await bot.add_cog(CompareGuidance(bot))

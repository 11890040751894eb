"""`/compare-strength`: one input image and seed at several img2img strengths (columns) and step counts (rows)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.chat.cogs import options as shared
from bot.job_requests import MAX_STEP_LIST_CHARS, MAX_STRENGTH_LIST_CHARS, RequestOptions

if TYPE_CHECKING:
    from bot.chat.client import Stepgrid


class CompareStrength(commands.Cog):
    """The `/compare-strength` command."""

    def __init__(self, bot: Stepgrid) -> None:
        self.bot = bot

    @app_commands.command(
        name="compare-strength",
        description="Start from one image at several strengths (and step counts): how much each changes it.",
    )
    @app_commands.describe(
        image="The image every cell starts from: PNG, JPEG or WebP",
        strengths="Columns, 0-1 (default 0.3,0.45,0.6,0.75,0.9: from a light touch to only the layout kept)",
        steps="Rows: step counts, comma-separated (default: the model's own). Of 30 steps at 0.6, the last 18 run",
    )
    @shared.drawing_command(size=False)
    async def compare_strength(
        self,
        interaction: discord.Interaction,
        image: discord.Attachment,
        prompt: shared.Prompt,
        strengths: app_commands.Range[str, 1, MAX_STRENGTH_LIST_CHARS] | None = None,
        steps: app_commands.Range[str, 1, MAX_STEP_LIST_CHARS] | None = None,
        scheduler: str | None = None,
        seed: shared.Seed | None = None,
        negative_prompt: shared.NegativePrompt | None = None,
        guidance: shared.Guidance | None = None,
        model: shared.ModelName | None = None,
        lora: shared.LoraName | None = None,
        lora_weight: shared.LoraWeight | None = None,
    ) -> None:
        options = RequestOptions(
            prompt, negative_prompt, scheduler, seed, guidance, compare_steps=steps, model=model, lora=lora,
            lora_weight=lora_weight, strengths=strengths, strength_grid=True,
        )  # fmt: skip
        await self.bot.jobs.start_command(interaction, options, origin="compare-strength", attachment=image)


async def setup(bot: Stepgrid) -> None:
    await bot.add_cog(CompareStrength(bot))

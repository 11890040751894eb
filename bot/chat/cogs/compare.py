"""`/compare-steps`: one prompt and seed rendered at several step counts, as one labelled grid."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.chat.cogs import options as shared
from bot.job_requests import RequestOptions
from inference.requests import MAX_COMPARE_SEEDS, MIN_COMPARE_SEEDS

if TYPE_CHECKING:
    from bot.chat.client import Stepgrid


class CompareSteps(commands.Cog):
    """The `/compare-steps` command."""

    def __init__(self, bot: Stepgrid) -> None:
        self.bot = bot

    @app_commands.command(
        name="compare-steps", description="Render one prompt and seed at several step counts, side by side."
    )
    @app_commands.describe(
        steps="Step counts separated by commas, 2 to 12 of them (default: the model's ladder, e.g. 1,2,3,4,6,8)",
        lora_compare="Two rows: without the LoRA, then with it, over both their step ladders (needs a lora)",
        stop_early="Add a row: the longest run stopped at each step count (its predicted image there)",
        seeds="Rows of seeds, 2 to 6 (this seed, then the next ones): is the sweet spot the same for every seed?",
    )
    @shared.drawing_command()
    async def compare_steps(
        self,
        interaction: discord.Interaction,
        prompt: shared.Prompt,
        steps: app_commands.Range[str, 1, 100] | None = None,
        scheduler: str | None = None,
        seed: shared.Seed | None = None,
        negative_prompt: shared.NegativePrompt | None = None,
        guidance: shared.Guidance | None = None,
        size: str | None = None,
        model: shared.ModelName | None = None,
        lora: shared.LoraName | None = None,
        lora_weight: shared.LoraWeight | None = None,
        image: discord.Attachment | None = None,
        strength: shared.Strength | None = None,
        lora_compare: bool = False,
        stop_early: bool | None = None,
        seeds: app_commands.Range[int, MIN_COMPARE_SEEDS, MAX_COMPARE_SEEDS] | None = None,
    ) -> None:
        options = RequestOptions(
            prompt, negative_prompt, scheduler, seed, guidance, size, compare_steps=steps, grid=True, model=model,
            lora=lora, lora_weight=lora_weight, strength=strength, lora_compare=lora_compare,
            stop_early=stop_early is True, seeds=seeds,
        )  # fmt: skip
        await self.bot.jobs.start_command(interaction, options, origin="compare-steps", attachment=image)


async def setup(bot: Stepgrid) -> None:
    await bot.add_cog(CompareSteps(bot))

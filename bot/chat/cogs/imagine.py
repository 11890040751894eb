"""`/imagine`: one prompt, one to four images, with live progress."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.chat.cogs import options as shared
from bot.job_requests import RequestOptions
from inference.requests import MAX_COUNT, MAX_STEPS, MAX_STRENGTH, MIN_COUNT, MIN_STEPS, MIN_STRENGTH

if TYPE_CHECKING:
    from bot.chat.client import Stepgrid


class Imagine(commands.Cog):
    """The `/imagine` command."""

    def __init__(self, bot: Stepgrid) -> None:
        self.bot = bot

    @app_commands.command(name="imagine", description="Generate images from a prompt with Stable Diffusion.")
    @app_commands.describe(
        steps="Denoising steps (default: the model's own; more is slower); with auto_steps, the most to run",
        auto_steps="Stop once the image settles (not with Euler a); at most steps, or the model's longest ladder",
        seed="Seed for a repeatable image (random when left out)",
        size="Width x height, e.g. 512 or 768x512 (multiples of 8)",
        count="How many images (consecutive seeds)",
        film="Also post a Steps film: the predicted finished image at every step (one image only)",
        image="An image to start from (img2img): PNG, JPEG or WebP; the result keeps its layout",
        strength=(
            "With an image: how much to change it, 0 to 1 (default: the model's). Of 30 steps at 0.6, the last 18 run"
        ),
    )
    @shared.drawing_command(grid=False)
    async def imagine(
        self,
        interaction: discord.Interaction,
        prompt: shared.Prompt,
        negative_prompt: shared.NegativePrompt | None = None,
        steps: app_commands.Range[int, MIN_STEPS, MAX_STEPS] | None = None,
        scheduler: str | None = None,
        seed: shared.Seed | None = None,
        guidance: shared.Guidance | None = None,
        size: str | None = None,
        count: app_commands.Range[int, MIN_COUNT, MAX_COUNT] | None = None,
        model: shared.ModelName | None = None,
        lora: shared.LoraName | None = None,
        lora_weight: shared.LoraWeight | None = None,
        film: bool | None = None,
        image: discord.Attachment | None = None,
        strength: app_commands.Range[float, MIN_STRENGTH, MAX_STRENGTH] | None = None,
        auto_steps: bool | None = None,
    ) -> None:
        options = RequestOptions(
            prompt,
            negative_prompt,
            scheduler,
            seed,
            guidance,
            size,
            steps=steps,
            count=count,
            model=model,
            film=film is True,
            lora=lora,
            lora_weight=lora_weight,
            strength=strength,
            auto_steps=auto_steps is True,
        )
        await self.bot.jobs.start_command(interaction, options, origin="imagine", attachment=image)


async def setup(bot: Stepgrid) -> None:
    await bot.add_cog(Imagine(bot))

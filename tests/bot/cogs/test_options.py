"""The option helpers the cogs share: autocomplete, the server a command runs in, the database."""

from __future__ import annotations

from typing import cast

import discord

from bot.cogs.options import size_autocomplete


async def test_size_autocomplete_filters_common_sizes() -> None:
    choices = await size_autocomplete(cast(discord.Interaction, None), "76")
    assert [choice.value for choice in choices] == ["768x512", "768"]
    assert choices[0].name == "768 × 512"

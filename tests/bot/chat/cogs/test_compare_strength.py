"""`/compare-strength`: the attached image and options to a strength x steps grid request, with the server's
limits read once."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import discord

from bot.chat.client import Stepgrid
from bot.chat.cogs.compare_strength import CompareStrength
from inference.requests import CompareStrengthRequest
from tests.bot.fakes import harness_with_counting_policy, png_of


class Attachment:
    def __init__(self, data: bytes) -> None:
        self.data, self.size, self.filename = data, len(data), "photo.png"

    async def read(self) -> bytes:
        return self.data


async def test_compare_strength_builds_a_grid_from_the_attached_image_and_one_read_of_the_limits() -> None:
    harness, policy = harness_with_counting_policy()
    cog = CompareStrength(cast(Stepgrid, SimpleNamespace(jobs=harness.service)))
    callback: Any = CompareStrength.compare_strength.callback
    image = cast(discord.Attachment, Attachment(png_of(256, 256)))
    await callback(cog, harness.interaction().as_interaction(), image, "a boat", strengths="0.9,0.3", steps="8",
                   seed=1)  # fmt: skip
    (request,) = harness.queue.requests.values()
    assert isinstance(request, CompareStrengthRequest)
    assert (request.prompt, request.strengths, request.steps, request.seed) == ("a boat", (0.3, 0.9), (8,), 1)
    assert request.image, "the attached image travels with the request"
    assert policy.reads == 1

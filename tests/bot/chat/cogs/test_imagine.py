"""`/imagine`: options to a request, with the server's limits read once."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

from bot.chat.client import Stepgrid
from bot.chat.cogs.imagine import Imagine
from inference.requests import GenerateRequest
from tests.bot.fakes import harness_with_counting_policy


async def test_imagine_fills_left_out_options_from_one_read_of_the_limits() -> None:
    harness, policy = harness_with_counting_policy()
    cog = Imagine(cast(Stepgrid, SimpleNamespace(jobs=harness.service)))
    callback: Any = Imagine.imagine.callback
    await callback(cog, harness.interaction().as_interaction(), "  a fox ", seed=5, size="768x512")
    (request,) = harness.queue.requests.values()
    assert request == GenerateRequest(
        "a fox", steps=30, scheduler="Euler a", seed=5, guidance=7.5, width=768, height=512, negative_prompt="", count=1
    )
    assert policy.reads == 1

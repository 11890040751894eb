"""`/compare-guidance`: options to a guidance x steps grid request, with the server's limits read once."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

from bot.chat.client import Stepgrid
from bot.chat.cogs.compare_guidance import CompareGuidance
from inference.requests import CompareGuidanceRequest
from tests.bot.fakes import harness_with_counting_policy


async def test_the_cog_builds_a_guidance_grid_from_one_read_of_the_limits() -> None:
    harness, policy = harness_with_counting_policy()
    cog = CompareGuidance(cast(Stepgrid, SimpleNamespace(jobs=harness.service)))
    callback: Any = CompareGuidance.compare_guidance.callback
    await callback(cog, harness.interaction().as_interaction(), "a boat", guidance="5,2", steps="8", seed=1,
                   scheduler="ddim")  # fmt: skip
    (request,) = harness.queue.requests.values()
    assert request == CompareGuidanceRequest("a boat", guidances=(2.0, 5.0), steps=(8,), scheduler="DDIM", seed=1)
    assert policy.reads == 1

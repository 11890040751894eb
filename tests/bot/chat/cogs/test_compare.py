"""`/compare-steps`: options to a grid request, with the server's limits read once."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

from bot.chat.client import Stepgrid
from bot.chat.cogs.compare import CompareSteps
from inference.requests import CompareStepsRequest
from tests.bot.fakes import harness_with_counting_policy


async def test_compare_steps_builds_a_grid_from_one_read_of_the_limits() -> None:
    harness, policy = harness_with_counting_policy()
    cog = CompareSteps(cast(Stepgrid, SimpleNamespace(jobs=harness.service)))
    callback: Any = CompareSteps.compare_steps.callback
    await callback(cog, harness.interaction().as_interaction(), "a boat", steps="4,8", seed=1, scheduler="Heun")
    (request,) = harness.queue.requests.values()
    assert request == CompareStepsRequest("a boat", steps=(4, 8), scheduler="Heun", seed=1)
    assert policy.reads == 1

"""`/compare-schedulers`: options to a scheduler × steps grid request, with the server's limits read once."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

from bot.chat.client import Stepgrid
from bot.chat.cogs.compare_schedulers import CompareSchedulers
from inference.requests import CompareSchedulersRequest
from tests.bot.fakes import harness_with_counting_policy


async def test_compare_schedulers_builds_a_grid_from_one_read_of_the_limits() -> None:
    harness, policy = harness_with_counting_policy()
    cog = CompareSchedulers(cast(Stepgrid, SimpleNamespace(jobs=harness.service)))
    callback: Any = CompareSchedulers.compare_schedulers.callback
    interaction = harness.interaction().as_interaction()
    await callback(cog, interaction, "a boat", schedulers="heun, DDIM", steps="4,8", seed=1)
    (request,) = harness.queue.requests.values()
    assert request == CompareSchedulersRequest("a boat", schedulers=("Heun", "DDIM"), steps=(4, 8), seed=1)
    assert policy.reads == 1

"""Helpers shared by the job service's tests (test_admission, test_button_actions, test_driver, test_service)."""

from __future__ import annotations

import asyncio
from typing import Any

from bot.job_requests import RequestOptions
from inference.requests import Request
from tests.bot.fakes import WAIT, FakeInteraction, Harness


async def start_command(harness: Harness, **options: Any) -> Request:
    """Run a command's options through the service; the request that was queued."""
    await harness.service.start_command(
        harness.interaction().as_interaction(), RequestOptions(**{"prompt": "a fox", **options}), origin="imagine"
    )
    return harness.queue.requests[harness.queue.job_ids[-1]]


async def start_while_loading(harness: Harness, **options: Any) -> tuple[FakeInteraction, asyncio.Task[None]]:
    """Send a command's options while the worker is still loading: accepted, not queued yet."""
    interaction = harness.interaction()
    task = await harness.service.start_command(
        interaction.as_interaction(), RequestOptions(**{"prompt": "a fox", **options}), origin="imagine"
    )
    return interaction, task


async def ended(task: asyncio.Task[None]) -> None:
    """The job's driver has answered it (a bug fails fast instead of hanging)."""
    await asyncio.wait_for(task, WAIT)


async def shown(interaction: FakeInteraction, text: str) -> None:
    await interaction.recorder.wait_for(lambda calls: any(text in (c.content or "") for c in calls))


FLUX_FIRST = 'models = [{name = "flux", source = "tiny-flux"}, {name = "sd15", source = "tiny"}]'

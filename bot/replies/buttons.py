"""The persistent buttons under a job's messages: Cancel while it runs; Reroll, fewer/more steps,
Compare steps, Steps film and Details under its result.

Buttons are `DynamicItem`s whose custom id carries the action and the job id
(`stepgrid:reroll:<job_id>`), so they keep working after a restart: the click is resolved
through the stored job parameters, not through anything held in memory.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import discord

from bot.errors import report_error
from bot.formatting import counted
from bot.job_requests import step_down, step_up
from inference.protocol import HIRES_SCALE, MAX_PIXELS, MAX_SIZE, MAX_STEPS, GenerateRequest

if TYPE_CHECKING:
    from bot.storage.job_store import JobRecord

ACTIONS = ("reroll", "fewer", "more", "compare", "film", "details", "cancel", "vary", "vary-strong", "upscale")
# Actions that start from the result image itself (read back from the result's message).
IMAGE_ACTIONS = ("vary", "vary-strong", "upscale")
CUSTOM_ID_PATTERN = rf"stepgrid:(?P<action>{'|'.join(ACTIONS)}):(?P<job_id>[A-Za-z0-9_-]{{1,64}})"


@runtime_checkable
class ButtonHandler(Protocol):
    """Acts on a click on one of a job's buttons (the bot's `JobService`)."""

    async def handle_button(self, interaction: discord.Interaction, action: str, job_id: str) -> None:
        """Answer `action` on the job `job_id`."""


class JobButton(discord.ui.DynamicItem[discord.ui.Button[discord.ui.View]], template=CUSTOM_ID_PATTERN):
    """A button bound to a job by its custom id; every action re-reads the stored job."""

    def __init__(
        self,
        action: str,
        job_id: str,
        *,
        label: str | None = None,
        emoji: str | None = None,
        style: discord.ButtonStyle = discord.ButtonStyle.secondary,
        disabled: bool = False,
        row: int | None = None,
    ) -> None:
        if action not in ACTIONS:
            raise ValueError(f"unknown button action {action!r}")
        super().__init__(
            discord.ui.Button(
                label=label,
                emoji=emoji,
                style=style,
                disabled=disabled,
                custom_id=custom_id(action, job_id),
                row=row,
            )
        )
        self.action = action
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction,
        item: discord.ui.Item[Any],
        match: re.Match[str],
        /,
    ) -> JobButton:
        return cls(match["action"], match["job_id"])

    async def callback(self, interaction: discord.Interaction) -> None:
        # Dynamic item errors bypass tree.on_error, so route them to the same handler here.
        try:
            await button_handler(interaction).handle_button(interaction, self.action, self.job_id)
        except Exception as error:
            await report_error(interaction, error)


def custom_id(action: str, job_id: str) -> str:
    """The custom id of a job button: `stepgrid:<action>:<job_id>`."""
    return f"stepgrid:{action}:{job_id}"


def button_handler(interaction: discord.Interaction) -> ButtonHandler:
    """What answers the clicks on the bot that received `interaction` (its job service)."""
    handler = getattr(interaction.client, "jobs", None)
    if not isinstance(handler, ButtonHandler):
        raise RuntimeError("this client has no job service")
    return handler


def progress_view(job_id: str) -> discord.ui.View:
    """The Cancel button shown while a job is queued or running."""
    view = discord.ui.View(timeout=None)
    view.add_item(JobButton("cancel", job_id, label="Cancel", emoji="✖️", style=discord.ButtonStyle.danger))
    return view


def upscalable(request: GenerateRequest) -> bool:
    """Whether the result of `request` upscaled ×2 stays within what any worker takes (an Upscale's result too)."""
    width, height = (side * HIRES_SCALE for side in request.output_size)
    return max(width, height) <= MAX_SIZE and width * height <= MAX_PIXELS


def result_view(record: JobRecord, max_steps: int = MAX_STEPS) -> discord.ui.View:
    """Buttons under a result: Reroll, fewer/more steps, Compare steps, Steps film (unless it is one), Details.

    `max_steps` is the most the job's model may run in its server: "more" stops there.
    """
    view = discord.ui.View(timeout=None)
    job_id = record.job_id
    view.add_item(JobButton("reroll", job_id, label="Reroll", emoji="🎲", style=discord.ButtonStyle.primary))
    request = record.request
    if isinstance(request, GenerateRequest):
        fewer, more = step_down(request.steps), step_up(request.steps, max_steps)
        view.add_item(
            JobButton(
                "fewer", job_id, label=counted(fewer or request.steps, "step"), emoji="➖", disabled=fewer is None
            )
        )
        view.add_item(
            JobButton("more", job_id, label=counted(more or request.steps, "step"), emoji="➕", disabled=more is None)
        )
        view.add_item(JobButton("compare", job_id, label="Compare steps", emoji="🔬"))
        if not request.film and not request.image:
            view.add_item(JobButton("film", job_id, label="Steps film", emoji="🎞️"))
        # Under every one-image result (from text, an image, a Vary or an Upscale); Upscale while twice the
        # result can still be made at all (a server's own cap is checked, in one line, when it is clicked).
        if request.count == 1 and not request.film:
            view.add_item(JobButton("vary", job_id, label="Vary (subtle)", emoji="🌱"))
            view.add_item(JobButton("vary-strong", job_id, label="Vary (strong)", emoji="🌪️"))
            if upscalable(request):
                view.add_item(JobButton("upscale", job_id, label="Upscale ×2", emoji="🔍"))
    view.add_item(JobButton("details", job_id, label="Details", emoji="ℹ️"))
    return view

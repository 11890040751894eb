"""The persistent buttons under a job's messages: Cancel while it runs; Reroll, fewer/more steps,
Compare steps, Steps film, Vary, Upscale and Details under its result.

Buttons are `DynamicItem`s whose custom id carries the action and the job id
(`stepgrid:reroll:<job_id>`), so they keep working after a restart: the click is resolved
through the stored job parameters, not through anything held in memory. A result of several images
has Vary and Upscale per image (V1–V4, U1–U4: `stepgrid:vary:<job_id>:2`); a comparison grid has a
menu per action listing its cells (`stepgrid:cells:vary:<job_id>`, the cell's number as the value).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import discord

from bot.errors import report_error
from bot.formatting import counted
from bot.job_requests import grid_cell, step_down, step_up
from inference.requests import (
    HIRES_SCALE,
    MAX_PIXELS,
    MAX_SIZE,
    MAX_STEPS,
    CompareGuidanceRequest,
    CompareSchedulersRequest,
    CompareStepsRequest,
    CompareStrengthRequest,
    GenerateRequest,
    Request,
)

if TYPE_CHECKING:
    from bot.storage.job_store import JobRecord

ACTIONS = ("reroll", "fewer", "more", "compare", "film", "details", "cancel", "vary", "vary-strong", "upscale")
# Actions that start from the result image itself (read back from the result's message, or a grid's kept cell).
IMAGE_ACTIONS = ("vary", "vary-strong", "upscale")
IMAGE_ROWS_START = 2  # a result of several images: V and U rows below the two rows of the other buttons
MAX_MENU_OPTIONS = 25  # Discord's most options in one select menu (a grid has at most 12 cells)
_JOB_ID = r"(?P<job_id>[A-Za-z0-9_-]{1,64})"
# An image's number (1-based) after the job id: which image of several, or which grid cell.
CUSTOM_ID_PATTERN = rf"stepgrid:(?P<action>{'|'.join(ACTIONS)}):{_JOB_ID}(?::(?P<number>[1-9][0-9]?))?"
CELL_MENU_PATTERN = rf"stepgrid:cells:(?P<action>{'|'.join(IMAGE_ACTIONS)}):{_JOB_ID}"
# What each image action is called on a button and in a cell menu.
IMAGE_ACTION_NAMES = {"vary": "Vary (subtle)", "vary-strong": "Vary (strong)", "upscale": "Upscale ×2"}
IMAGE_ACTION_EMOJI = {"vary": "🌱", "vary-strong": "🌪️", "upscale": "🔍"}


@runtime_checkable
class ButtonHandler(Protocol):
    """Acts on a click on one of a job's buttons (the bot's `JobService`)."""

    async def handle_button(
        self, interaction: discord.Interaction, action: str, job_id: str, number: int | None = None
    ) -> None:
        """Answer `action` on the job `job_id` (on its image or cell `number`, 1-based, where given)."""


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
        number: int | None = None,
    ) -> None:
        if action not in ACTIONS:
            raise ValueError(f"unknown button action {action!r}")
        super().__init__(
            discord.ui.Button(
                label=label,
                emoji=emoji,
                style=style,
                disabled=disabled,
                custom_id=custom_id(action, job_id, number),
                row=row,
            )
        )
        self.action = action
        self.job_id = job_id
        self.number = number

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction,
        item: discord.ui.Item[Any],
        match: re.Match[str],
        /,
    ) -> JobButton:
        number = match["number"]
        return cls(match["action"], match["job_id"], number=None if number is None else int(number))

    async def callback(self, interaction: discord.Interaction) -> None:
        # Dynamic item errors bypass tree.on_error, so route them to the same handler here.
        try:
            await button_handler(interaction).handle_button(interaction, self.action, self.job_id, self.number)
        except Exception as error:
            await report_error(interaction, error)


class CellMenu(discord.ui.DynamicItem[discord.ui.Select[discord.ui.View]], template=CELL_MENU_PATTERN):
    """A grid's menu for one image action (Vary subtle or strong, Upscale): picking a cell runs it on that cell."""

    def __init__(
        self,
        action: str,
        job_id: str,
        *,
        cells: Mapping[int, str] | None = None,
        row: int | None = None,
        disabled: bool = False,
    ) -> None:
        """`cells`: each cell's label by its number (1-based, lane order)."""
        if action not in IMAGE_ACTIONS:
            raise ValueError(f"unknown cell action {action!r}")
        listed = list((cells or {}).items())[:MAX_MENU_OPTIONS]
        options = [discord.SelectOption(label=label[:100], value=str(number)) for number, label in listed]
        super().__init__(
            discord.ui.Select(
                custom_id=cell_menu_id(action, job_id),
                placeholder=f"{IMAGE_ACTION_EMOJI[action]} {IMAGE_ACTION_NAMES[action]} a cell…",
                options=options,
                row=row,
                disabled=disabled,
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
    ) -> CellMenu:
        return cls(match["action"], match["job_id"])

    async def callback(self, interaction: discord.Interaction) -> None:
        try:
            values = self.item.values
            if len(values) != 1 or not values[0].isdigit():
                raise ValueError(f"a cell menu answered {values!r}")
            await button_handler(interaction).handle_button(interaction, self.action, self.job_id, int(values[0]))
        except Exception as error:
            await report_error(interaction, error)


def custom_id(action: str, job_id: str, number: int | None = None) -> str:
    """The custom id of a job button: `stepgrid:<action>:<job_id>`, with `:<number>` for one image of several."""
    return f"stepgrid:{action}:{job_id}" + ("" if number is None else f":{number}")


def cell_menu_id(action: str, job_id: str) -> str:
    """The custom id of a grid's cell menu for `action`: `stepgrid:cells:<action>:<job_id>`."""
    return f"stepgrid:cells:{action}:{job_id}"


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


def result_view(record: JobRecord, max_steps: int = MAX_STEPS, *, leave_out: Collection[int] = ()) -> discord.ui.View:
    """Buttons under a result: Reroll, fewer/more steps, Compare steps, Steps film (unless it is one), Vary,
    Upscale, Details; under a grid, Reroll, Details and its cell menus.

    `max_steps` is the most the job's model may run in its server: "more" stops there. `leave_out`: a grid's
    cells (lane indices) not posted here (withheld), left out of its menus.
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
    if isinstance(request, GenerateRequest) and request.count > 1 and not request.film:
        _add_image_rows(view, job_id, request)
    elif not isinstance(request, GenerateRequest):
        _add_cell_menus(view, job_id, request, leave_out)
    return view


def image_actions(request: GenerateRequest) -> tuple[str, ...]:
    """The image actions a result of `request` offers: both Varies, and Upscale while twice it can be made."""
    return IMAGE_ACTIONS if upscalable(request) else tuple(a for a in IMAGE_ACTIONS if a != "upscale")


def _add_image_rows(view: discord.ui.View, job_id: str, request: GenerateRequest) -> None:
    """Midjourney's V1–V4 and U1–U4, a row per action: "V2 subtle", "V2 strong", "U2 ×2" act on image 2.

    The other buttons take the first two rows (six of them), which leaves exactly three rows of five.
    """
    labels = {"vary": "V{} subtle", "vary-strong": "V{} strong", "upscale": "U{} ×2"}
    for row, action in enumerate(image_actions(request), start=IMAGE_ROWS_START):
        for number in range(1, request.count + 1):
            label = labels[action].format(number)
            view.add_item(
                JobButton(action, job_id, label=label, emoji=IMAGE_ACTION_EMOJI[action], row=row, number=number)
            )


def _add_cell_menus(view: discord.ui.View, job_id: str, request: Request, leave_out: Collection[int]) -> None:
    """A menu per image action listing the grid's cells by what sets each apart (up to 36 buttons would
    not fit a message's 25: a menu holds every cell, one pick starts the job)."""
    cells = {number: label for number, label in enumerate(cell_labels(request), start=1) if number - 1 not in leave_out}
    if not cells:
        return
    for row, action in enumerate(image_actions(grid_cell(request, 1)), start=1):
        view.add_item(CellMenu(action, job_id, cells=cells, row=row))


def cell_labels(request: Request) -> tuple[str, ...]:
    """Each grid cell in lane order (row by row), named by its own settings: "20 steps", "DPM++ 2M · 20 steps",
    "strength 0.6 · 30 steps", "CFG 7.5 · 30 steps", "with lcm · 4 steps", "seed 43 · 20 steps"."""
    steps = tuple(counted(n, "step") for n in request.lane_steps)
    if isinstance(request, CompareSchedulersRequest):
        return tuple(f"{name} · {n}" for name, n in zip(request.lane_schedulers, steps, strict=True))
    if isinstance(request, CompareStrengthRequest):
        return tuple(f"strength {s:g} · {n}" for s, n in zip(request.lane_strengths, steps, strict=True))
    if isinstance(request, CompareGuidanceRequest):
        return tuple(f"CFG {g:g} · {n}" for g, n in zip(request.lane_guidances, steps, strict=True))
    if isinstance(request, CompareStepsRequest) and request.without_loras is not None:
        names = ", ".join(name for name, _ in request.loras)
        rows = (f"without {names}",) * len(request.steps) + (f"with {names}",) * len(request.steps)
        return tuple(f"{row} · {n}" for row, n in zip(rows, steps, strict=True))
    if isinstance(request, CompareStepsRequest) and request.seeds > 1:
        return tuple(f"seed {seed} · {n}" for seed, n in zip(request.lane_seeds, steps, strict=True))
    return steps if isinstance(request, CompareStepsRequest) else ()

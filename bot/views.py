"""What a job looks like in Discord: progress and result messages, embeds and persistent buttons.

Buttons are `DynamicItem`s whose custom id carries the action and the job id
(`stepgrid:reroll:<job_id>`), so they keep working after a restart: the click is resolved
through the stored job parameters, not through anything held in memory.
"""

from __future__ import annotations

import io
import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import discord
from discord import app_commands

from bot.errors import report_error
from bot.render import fit_attachment, grid_png
from inference.protocol import (
    MAX_STEPS,
    MIN_STEPS,
    SCHEDULER_NAMES,
    CompareStepsRequest,
    GenerateRequest,
    JobResult,
    Request,
)

if TYPE_CHECKING:
    from bot.jobs import JobService, ProgressState
    from bot.store import JobRecord

log = logging.getLogger(__name__)

ACTIONS = ("reroll", "fewer", "more", "compare", "details", "cancel")
CUSTOM_ID_PATTERN = rf"stepgrid:(?P<action>{'|'.join(ACTIONS)}):(?P<job_id>[A-Za-z0-9_-]{{1,64}})"
COLOUR = discord.Colour.blurple()

# Steps a user is likely to want next; "fewer"/"more" move one rung along this ladder.
STEP_LADDER = (1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 60, 75, 100, 125, 150)


# --- message contents -------------------------------------------------------------------------


@dataclass(frozen=True)
class Attachment:
    """File bytes with a name; turned into a fresh `discord.File` for every send."""

    data: bytes
    filename: str

    def to_file(self) -> discord.File:
        return discord.File(io.BytesIO(self.data), filename=self.filename)


@dataclass(frozen=True, eq=False)
class MessageUpdate:
    """Everything one edit of a job's message sets; attachments and view replace the old ones."""

    content: str | None = None
    embeds: tuple[discord.Embed, ...] = ()
    files: tuple[Attachment, ...] = ()
    view: discord.ui.View | None = None


def step_down(steps: int) -> int | None:
    """The next rung below `steps` on the step ladder, or None at the bottom."""
    lower = [rung for rung in STEP_LADDER if rung < steps and rung >= MIN_STEPS]
    return lower[-1] if lower else None


def step_up(steps: int) -> int | None:
    """The next rung above `steps` on the step ladder, or None at the top."""
    higher = [rung for rung in STEP_LADDER if rung > steps and rung <= MAX_STEPS]
    return higher[0] if higher else None


def progress_bar(done: int, total: int, width: int = 12) -> str:
    """A text bar like ▰▰▰▱▱▱ for `done` of `total`."""
    filled = 0 if total <= 0 else min(width, round(width * done / total))
    return "▰" * filled + "▱" * (width - filled)


def progress_text(request: Request, state: ProgressState) -> str:
    """One line saying where the job is: queued at a position, starting, or at step k/N."""
    if not state.started:
        if state.position is None:
            return "⏳ Queued…"
        return f"⏳ Queued — position {state.position}."
    retry = f" (attempt {state.attempt}, the worker restarted)" if state.attempt > 1 else ""
    if state.job_total <= 0:
        return f"🎨 Starting…{retry}"
    if isinstance(request, CompareStepsRequest):
        # The job's total is the sum over cells ("step 80/155" reads as a step count nobody asked
        # for): show the share of the work done and where the longest cell is.
        cells = len(request.steps)
        done = sum(1 for lane, steps in enumerate(request.steps) if state.lane_steps.get(lane, 0) >= steps)
        longest = max(range(cells), key=lambda lane: request.steps[lane])
        percent = min(100, 100 * state.job_step // state.job_total)
        return (
            f"🎨 {progress_bar(state.job_step, state.job_total)} {percent}% · {done}/{cells} cells done"
            f" · longest cell at step {state.lane_steps.get(longest, 0)}/{request.steps[longest]}{retry}"
        )
    step = min((state.lane_steps.get(lane, 0) for lane in range(request.count)), default=0)
    images = f" · {request.count} images" if request.count > 1 else ""
    return f"🎨 {progress_bar(step, request.steps)} step {step}/{request.steps}{images}{retry}"


def progress_message(record: JobRecord, state: ProgressState) -> MessageUpdate:
    """The message while a job waits or runs: status line, prompt, latest preview, Cancel button."""
    embed = discord.Embed(description=_clip(record.request.prompt, 300), colour=COLOUR)
    embed.set_footer(text=f"job {record.job_id}")
    files: tuple[Attachment, ...] = ()
    if state.preview_png is not None:
        files = (Attachment(state.preview_png, "preview.png"),)
        embed.set_image(url="attachment://preview.png")
    return MessageUpdate(
        content=progress_text(record.request, state),
        embeds=(embed,),
        files=files,
        view=progress_view(record.job_id),
    )


def encode_result_files(record: JobRecord, result: JobResult, *, limit: int) -> tuple[Attachment, ...]:
    """The result's image(s) as attachments no larger than `limit` each (CPU-bound: run in a thread)."""
    request = record.request
    if isinstance(request, CompareStepsRequest):
        data, extension = fit_attachment(grid_png(result.images), limit)
        return (Attachment(data, f"stepgrid-compare-{request.seed}.{extension}"),)
    files = []
    for image in result.images:
        data, extension = fit_attachment(image.png, limit)
        files.append(Attachment(data, f"stepgrid-{image.seed}.{extension}"))
    return tuple(files)


def result_message(record: JobRecord, result: JobResult, files: tuple[Attachment, ...]) -> MessageUpdate:
    """The final message: image(s), an embed with every parameter and timing, the result buttons."""
    embed = parameters_embed(record.request, job_id=record.job_id)
    if isinstance(record.request, CompareStepsRequest):
        embed.add_field(name="Generation", value=f"{result.gpu_seconds:.1f} s (all cells batched)")
    else:
        per_image = ", ".join(f"{image.seconds:.1f} s" for image in result.images)
        embed.add_field(name="Generation", value=per_image)
    embed.add_field(name="Queue wait", value=f"{result.queue_seconds:.1f} s")
    notes = [f"job {record.job_id}"]
    if result.prompt_truncated:
        notes.append("prompt truncated to the model's token limit")
    if result.is_test_model:
        notes.append("random-weight test model")
    embed.set_footer(text=" · ".join(notes))
    if len(files) == 1:
        embed.set_image(url=f"attachment://{files[0].filename}")
    return MessageUpdate(content=None, embeds=(embed,), files=files, view=result_view(record))


def parameters_embed(request: Request, *, job_id: str | None = None) -> discord.Embed:
    """An embed listing every parameter of a request."""
    compare = isinstance(request, CompareStepsRequest)
    embed = discord.Embed(
        title="Compare steps" if compare else "Imagine",
        description=_clip(request.prompt, 4000),
        colour=COLOUR,
    )
    if isinstance(request, CompareStepsRequest):
        embed.add_field(name="Steps", value=", ".join(str(steps) for steps in request.steps))
        embed.add_field(name="Seed", value=str(request.seed))
    else:
        embed.add_field(name="Steps", value=str(request.steps))
        seeds = request.lane_seeds
        embed.add_field(name="Seed" if len(seeds) == 1 else "Seeds", value=", ".join(map(str, seeds)))
    embed.add_field(name="Scheduler", value=request.scheduler)
    embed.add_field(name="Guidance", value=f"{request.guidance:g}")
    embed.add_field(name="Size", value=f"{request.width}×{request.height}")
    if isinstance(request, GenerateRequest):
        embed.add_field(name="Images", value=str(request.count))
    if request.negative_prompt:
        embed.add_field(name="Negative prompt", value=_clip(request.negative_prompt, 1000), inline=False)
    if job_id is not None:
        embed.set_footer(text=f"job {job_id}")
    return embed


def details_embed(record: JobRecord) -> discord.Embed:
    """The Details button's answer: every parameter, who asked and when."""
    embed = parameters_embed(record.request, job_id=record.job_id)
    embed.add_field(name="Requested by", value=f"<@{record.user_id}>")
    embed.add_field(name="Command", value=record.command)
    embed.timestamp = record.created_at
    return embed


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- buttons ----------------------------------------------------------------------------------


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
            await job_service(interaction).handle_button(interaction, self.action, self.job_id)
        except Exception as error:
            await report_error(interaction, error)


def custom_id(action: str, job_id: str) -> str:
    """The custom id of a job button: `stepgrid:<action>:<job_id>`."""
    return f"stepgrid:{action}:{job_id}"


def job_service(interaction: discord.Interaction) -> JobService:
    """The JobService of the bot that received `interaction`."""
    service = getattr(interaction.client, "jobs", None)
    if service is None:
        raise RuntimeError("this client has no job service")
    return cast("JobService", service)


def progress_view(job_id: str) -> discord.ui.View:
    """The Cancel button shown while a job is queued or running."""
    view = discord.ui.View(timeout=None)
    view.add_item(JobButton("cancel", job_id, label="Cancel", emoji="✖️", style=discord.ButtonStyle.danger))
    return view


def result_view(record: JobRecord) -> discord.ui.View:
    """Buttons under a result: Reroll, fewer/more steps, Compare steps, Details."""
    view = discord.ui.View(timeout=None)
    job_id = record.job_id
    view.add_item(JobButton("reroll", job_id, label="Reroll", emoji="🎲", style=discord.ButtonStyle.primary))
    request = record.request
    if isinstance(request, GenerateRequest):
        fewer, more = step_down(request.steps), step_up(request.steps)
        view.add_item(
            JobButton("fewer", job_id, label=f"{fewer or request.steps} steps", emoji="➖", disabled=fewer is None)
        )
        view.add_item(
            JobButton("more", job_id, label=f"{more or request.steps} steps", emoji="➕", disabled=more is None)
        )
        view.add_item(JobButton("compare", job_id, label="Compare steps", emoji="🔬"))
    view.add_item(JobButton("details", job_id, label="Details", emoji="ℹ️"))
    return view


# --- command options --------------------------------------------------------------------------

SCHEDULER_CHOICES: list[app_commands.Choice[str]] = [
    app_commands.Choice(name=name, value=name) for name in SCHEDULER_NAMES
]
SIZE_SUGGESTIONS = ("512", "768x512", "512x768", "640", "768", "1024x576", "576x1024", "1024")


async def size_autocomplete(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
    """Common sizes matching what the user typed so far (any other WxH can still be typed)."""
    typed = current.strip().lower().replace("×", "x")
    return [
        app_commands.Choice(name=_size_label(size), value=size) for size in SIZE_SUGGESTIONS if size.startswith(typed)
    ]


def _size_label(size: str) -> str:
    width, _, height = size.partition("x")
    return f"{width} × {height or width}"

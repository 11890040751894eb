"""What a job looks like in Discord: the progress, result and failure messages and their embeds.

Presentation only: `JobService` decides what happens, this module decides how it reads. The
buttons under the messages are in `bot.replies.buttons`.
"""

from __future__ import annotations

import dataclasses
import io
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import discord

from bot.formatting import counted, eta_words
from bot.pictures.comparison import render_comparison
from bot.pictures.film import downscale_note, film_animation, source_note
from bot.pictures.grids import cell_lora_hashes
from bot.pictures.render import fit_attachment, png_parameters
from bot.replies.buttons import progress_view, result_view
from bot.replies.screening import SPOILER_PREFIX, Screening, as_withheld, withheld_note
from inference.protocol import JobFailed, JobProgress, JobQueued, JobResult, JobStarted
from inference.queues.eta import Eta
from inference.requests import (
    MAX_STEPS,
    CompareSchedulersRequest,
    CompareStepsRequest,
    CompareStrengthRequest,
    GenerateRequest,
    Request,
    guidance_values,
    lane_steps_run,
)

if TYPE_CHECKING:
    from bot.storage.job_store import JobRecord

log = logging.getLogger(__name__)

COLOUR = discord.Colour.blurple()


# --- message contents -------------------------------------------------------------------------


@dataclass(frozen=True)
class Attachment:
    """File bytes with a name; turned into a fresh `discord.File` for every send."""

    data: bytes
    filename: str

    def to_file(self) -> discord.File:
        return discord.File(io.BytesIO(self.data), filename=self.filename)


FILM_FILE_PREFIX = "stepgrid-film-"
IMAGE_FILE_PREFIX = "stepgrid-"  # then the image's seed: `stepgrid-<seed>.png`


def result_attachment(message: discord.Message | None, seed: int) -> discord.Attachment | None:
    """The image of seed `seed` as posted on a result message (as a spoiler too), or None if it is not there."""
    name = f"{IMAGE_FILE_PREFIX}{seed}."
    attachments = message.attachments if message is not None else []
    return next((a for a in attachments if a.filename.removeprefix(SPOILER_PREFIX).startswith(name)), None)


@dataclass(frozen=True)
class RenderedResult:
    """A result's attachments and, for a comparison grid, where its rows settle in words; a film job's
    film size when its film is among the attachments."""

    files: tuple[Attachment, ...]
    summary: str | None = None
    film_size: tuple[int, int] | None = None
    withheld: int = 0  # flagged pictures (images or grid cells) not posted here
    spoiler: bool = False  # the files go as spoilers
    withheld_cells: frozenset[int] = frozenset()  # a grid's (lane indices): left out of its cell menus


@dataclass(frozen=True, eq=False)
class MessageUpdate:
    """Everything one edit of a job's message sets; attachments and view replace the old ones."""

    content: str | None = None
    embeds: tuple[discord.Embed, ...] = ()
    files: tuple[Attachment, ...] = ()
    view: discord.ui.View | None = None


@dataclass
class ProgressState:
    """What the user is shown while a job waits or runs."""

    position: int | None = None
    loading: bool = False  # the worker is still loading the model: the job waits for it
    started: bool = False
    attempt: int = 1
    lane_steps: dict[int, int] = field(default_factory=dict)
    job_step: int = 0
    job_total: int = 0
    lane_total: int = 0  # steps the latest lane runs (an img2img lane runs fewer than it was asked)
    preview_png: bytes | None = None
    previews_stopped: bool = False  # a flagged preview may not be shown here: no more previews for this job
    preview_spoiler: bool = False  # a flagged preview shown here goes as a spoiler
    steps_before: int = 0  # steps that ran in earlier attempts (the worker crashed and restarted)
    eta: Eta | None = None  # the queue's estimate when this state was last shown (None: no measurement yet)

    @property
    def steps_seen(self) -> int:
        """Steps that ran over every attempt, as far as the progress events tell."""
        return self.steps_before + self.job_step

    def apply(self, event: JobQueued | JobStarted | JobProgress) -> None:
        """Fold one queue event into the state."""
        if isinstance(event, JobQueued):
            self.position = event.position
        elif isinstance(event, JobStarted):
            self.started = True
            self.loading = False
            self.attempt = event.attempt
            self.lane_steps.clear()
            self.steps_before += self.job_step
            self.job_step = 0
        else:
            self.started = True
            for lane, step in event.lane_steps or ((event.lane, event.step),):
                self.lane_steps[lane] = step
            self.job_step, self.job_total, self.lane_total = event.job_step, event.job_total, event.total
            if event.preview_png is not None and not self.previews_stopped:
                self.preview_png = event.preview_png

    def stop_previews(self) -> None:
        """Show no preview from now on (the one shown goes too)."""
        self.previews_stopped = True
        self.preview_png = None


def progress_bar(done: int, total: int, width: int = 12) -> str:
    """A text bar like ▰▰▰▱▱▱ for `done` of `total`."""
    filled = 0 if total <= 0 else min(width, round(width * done / total))
    return "▰" * filled + "▱" * (width - filled)


def progress_text(request: Request, state: ProgressState) -> str:
    """One line saying where the job is: queued at a position, starting, or at step k/N."""
    if not state.started:
        loading = " The model is still loading; your job runs as soon as it is ready." if state.loading else ""
        if state.position is None:
            return f"⏳ Queued…{loading}"
        return f"⏳ Queued — position {state.position}{eta_words(state.eta, waiting=True)}.{loading}"
    retry = f" (attempt {state.attempt}, the worker restarted)" if state.attempt > 1 else ""
    if state.job_total <= 0:
        return f"🎨 Starting…{retry}"
    left = eta_words(state.eta, waiting=False)
    if not isinstance(request, GenerateRequest):
        # The job's total is the sum over cells ("step 80/155" reads as a step count nobody asked
        # for): show the share of the work done and where the longest cell is. A cell that starts from
        # an image runs only its share of its schedule (as SD counts it: FLUX and SD 3 may run one more).
        lane_steps = lane_steps_run(request)
        cells = len(lane_steps)
        done = sum(1 for lane, steps in enumerate(lane_steps) if state.lane_steps.get(lane, 0) >= steps)
        longest = max(range(cells), key=lambda lane: lane_steps[lane])
        percent = min(100, 100 * state.job_step // state.job_total)
        return (
            f"🎨 {progress_bar(state.job_step, state.job_total)} {percent}% · {done}/{cells} cells done"
            f" · longest cell at step {state.lane_steps.get(longest, 0)}/{lane_steps[longest]}{left}{retry}"
        )
    step = min((state.lane_steps.get(lane, 0) for lane in range(request.count)), default=0)
    images = f" · {request.count} images" if request.count > 1 else ""
    total = state.lane_total or request.steps  # of an img2img lane, the steps that run
    return f"🎨 {progress_bar(step, total)} step {step}/{total}{images}{left}{retry}"


def progress_message(record: JobRecord, state: ProgressState) -> MessageUpdate:
    """The message while a job waits or runs: status line, prompt, latest preview, Cancel button."""
    embed = discord.Embed(description=_clip(record.request.prompt, 300), colour=COLOUR)
    model = f" · {record.request.model}" if record.request.model else ""
    embed.set_footer(text=f"job {record.job_id}{model}")
    files: tuple[Attachment, ...] = ()
    if state.preview_png is not None and state.preview_spoiler:  # an embed's image is never blurred
        files = (Attachment(state.preview_png, f"{SPOILER_PREFIX}preview.png"),)
    elif state.preview_png is not None:
        files = (Attachment(state.preview_png, "preview.png"),)
        embed.set_image(url="attachment://preview.png")
    return MessageUpdate(
        content=progress_text(record.request, state),
        embeds=(embed,),
        files=files,
        view=progress_view(record.job_id),
    )


def encode_result_files(
    record: JobRecord, result: JobResult, *, limit: int, screening: Screening | None = None
) -> RenderedResult:
    """The result's image(s) as attachments no larger than `limit` each, and a grid's sweet spot in
    words (CPU-bound: run in a thread). `screening` says which flagged pictures are withheld (a grid
    cell becomes a neutral tile, an image is left out) and whether the rest go as spoilers."""
    rendered = _encode_files(record, result, limit, screening or Screening())
    if not rendered.spoiler:
        return rendered
    spoiled = tuple(Attachment(file.data, SPOILER_PREFIX + file.filename) for file in rendered.files)
    return dataclasses.replace(rendered, files=spoiled)


def _encode_files(record: JobRecord, result: JobResult, limit: int, screening: Screening) -> RenderedResult:
    request = record.request
    withheld = screening.withheld(result)
    spoiler = screening.spoils(result)
    if not isinstance(request, GenerateRequest):
        cells = [as_withheld(image) if i in withheld else image for i, image in enumerate(result.images)]
        model = result.model or request.model
        grid = render_comparison(request, cells, model=model, lora_hashes=cell_lora_hashes(result.images))
        data, extension = fit_attachment(grid.png, limit)
        notes = (withheld_note(len(withheld), grid=True) if withheld else "", grid.summary)
        grid_summary = " ".join(line for line in notes if line)
        grid_file = Attachment(data, f"stepgrid-compare-{request.seed}.{extension}")
        return RenderedResult(
            (grid_file,), grid_summary, withheld=len(withheld), spoiler=spoiler, withheld_cells=frozenset(withheld)
        )
    files, summary, film_size = [], None, None
    for index, image in enumerate(result.images):
        if index in withheld:  # the image and its film: a film's last frames are the image
            continue
        if image.frames:
            try:
                film = film_animation(
                    image.frames, request.prompt, limit, png_parameters(image.png), image.frame_sigmas
                )
                files.append(Attachment(film.data, f"{FILM_FILE_PREFIX}{image.seed}.{film.extension}"))
                film_size = film.size
            except ValueError as error:  # the image is finished: deliver it without its film
                log.warning("job %s: %s", record.job_id, error, extra={"job_id": record.job_id})
                summary = (
                    f"The steps film ({len(image.frames)} frames) did not fit this channel's upload limit; "
                    "here is the image."
                )
        data, extension = fit_attachment(image.png, limit)
        files.append(Attachment(data, f"{IMAGE_FILE_PREFIX}{image.seed}.{extension}"))
    if withheld:
        summary = " ".join(line for line in (withheld_note(len(withheld), grid=False), summary) if line)
    return RenderedResult(tuple(files), summary, film_size, withheld=len(withheld), spoiler=spoiler)


def result_message(
    record: JobRecord, result: JobResult, rendered: RenderedResult, *, max_steps: int = MAX_STEPS
) -> MessageUpdate:
    """The final message: image(s), a grid's sweet spot in words, an embed with every parameter and
    timing, the result buttons ("more" stops at `max_steps`, the model's ceiling in the job's server)."""
    files = rendered.files
    request = dataclasses.replace(record.request, model=result.model or record.request.model)
    embed = parameters_embed(request, film=_film_text(request, result, rendered.film_size))
    if not isinstance(record.request, GenerateRequest):
        value = f"{result.gpu_seconds:.1f} s, all cells batched (a cell's seconds are its share of the GPU time)"
        embed.add_field(name="Generation", value=value)
    else:
        per_image = ", ".join(f"{image.seconds:.1f} s" for image in result.images)
        embed.add_field(name="Generation", value=per_image)
    embed.add_field(name="Queue wait", value=f"{result.queue_seconds:.1f} s")
    ran = steps_ran_text(record.request, result)
    if ran:
        index = next(i for i, item in enumerate(embed.fields) if item.name == "Steps")
        embed.set_field_at(index, name="Steps", value=ran, inline=False)
    if record.notes:
        embed.add_field(name="Input image", value=_clip("; ".join(record.notes), 1000), inline=False)
    notes = [f"job {record.job_id}", model_name(result.model or record.request.model)]
    if result.prompt_truncated:
        notes.append("prompt truncated to the model's token limit")
    if result.is_test_model:
        notes.append("random-weight test model")
    embed.set_footer(text=" · ".join(notes))
    # A film job shows its film (the first file); the PNG rides along. An embed's image is never blurred:
    # spoilers are posted as plain attachments.
    if (len(files) == 1 or rendered.film_size) and not rendered.spoiler:
        embed.set_image(url=f"attachment://{files[0].filename}")
    view = result_view(record, max_steps, leave_out=rendered.withheld_cells)
    content = " ".join(line for line in (record.steps_note, rendered.summary) if line) or None
    return MessageUpdate(content=content, embeds=(embed,), files=files, view=view)


def steps_ran_text(request: Request, result: JobResult) -> str:
    """What ran of a job that started from an image or had a hires pass ("30 steps · strength 0.6 ·
    18 ran"), or a `steps: auto` job's ("auto → 18 steps"); "" for one that ran every step it asked for."""
    if isinstance(request, GenerateRequest) and request.auto_steps and result.images:
        return auto_steps_text(request, result)
    if not result.images or not (request.image or (isinstance(request, GenerateRequest) and request.hires)):
        return ""
    if isinstance(request, GenerateRequest) and request.hires is not None:
        hires, first = request.hires, result.images[0]
        before = "input image" if request.image else f"{counted(request.steps, 'step')}"
        return (
            f"{before} → ×{hires.scale} Lanczos → {counted(hires.steps, 'step')} · strength {hires.strength:g} · "
            f"{first.steps_run} ran"
        )
    if isinstance(request, GenerateRequest):
        first = result.images[0]
        return f"{counted(first.steps, 'step')} · strength {request.strength:g} · {first.steps_run} ran"
    if isinstance(request, CompareStrengthRequest):  # a line per row: "30 steps · strength 0.3, 0.6 · ran 9, 18"
        columns = len(request.strengths)
        rows = [result.images[start : start + columns] for start in range(0, len(result.images), columns)]
        return "\n".join(
            f"{counted(row[0].steps, 'step')} · strength {', '.join(f'{i.strength:g}' for i in row)} · "
            f"ran {', '.join(str(i.steps_run) for i in row)}"
            for row in rows
        )
    cells = ", ".join(str(image.steps_run) for image in result.images)
    return f"{', '.join(map(str, request.steps))} · strength {request.strength:g} · ran {cells}"


def auto_steps_text(request: GenerateRequest, result: JobResult) -> str:
    """ "auto → 18 steps (settled: the predicted clean image; at most 50)", or for several images "auto → 18, 24
    steps"; a run that never settled says so."""
    ran = ", ".join(str(image.steps_run) for image in result.images)
    settled = [image.auto_settled for image in result.images]
    if all(settled):
        how = "settled: the predicted clean image"
    elif not any(settled):
        how = "not settled"
    else:
        how = "settled: " + ", ".join("yes" if done else "no" for done in settled)
    return f"auto → {ran} step{'' if ran == '1' else 's'} ({how}; at most {request.steps})"


def _film_text(request: Request, result: JobResult, film_size: tuple[int, int] | None) -> str:
    """The result's "Steps film" line: its frames, whether they are downscaled and what they show."""
    image = result.images[0] if isinstance(request, GenerateRequest) and request.film and result.images else None
    if image is None or not image.frames:
        return ""
    if film_size is None:
        return f"{counted(len(image.frames), 'frame')}, one per step; not posted (it did not fit the upload limit)."
    downscaled = downscale_note(film_size, (request.width, request.height))
    size = f", {downscaled}" if downscaled else ""
    return f"{counted(len(image.frames), 'frame')}, one per step{size}: {source_note(image.frames_source)}."


def parameters_embed(request: Request, *, job_id: str | None = None, film: str = "") -> discord.Embed:
    """An embed listing every parameter of a request; a film job's "Steps film" says `film` when given."""
    title = request.command.replace("-", " ").capitalize()  # the command: "Imagine", "Compare steps"
    embed = discord.Embed(title=title, description=_clip(request.prompt, 4000), colour=COLOUR)
    if not isinstance(request, GenerateRequest):
        embed.add_field(name="Steps", value=", ".join(str(steps) for steps in request.steps))
        if isinstance(request, CompareStepsRequest) and request.seeds > 1:  # a row per seed
            embed.add_field(name="Seeds", value=", ".join(map(str, request.row_seeds)))
        else:
            embed.add_field(name="Seed", value=str(request.seed))
    else:
        embed.add_field(name="Steps", value=str(request.steps))
        seeds = request.lane_seeds
        embed.add_field(name="Seed" if len(seeds) == 1 else "Seeds", value=", ".join(map(str, seeds)))
    embed.add_field(name="Model", value=model_name(request.model))
    if request.loras:
        embed.add_field(name="LoRAs", value=", ".join(f"{name} {weight:g}" for name, weight in request.loras))
    if isinstance(request, CompareSchedulersRequest):
        embed.add_field(name="Schedulers", value=", ".join(request.schedulers))
    elif isinstance(request, CompareStepsRequest) and request.without_loras is not None:
        row = request.without_loras
        embed.add_field(name="Scheduler", value=f"{request.scheduler} (without the LoRA: {row.scheduler})")
        embed.add_field(name="Guidance", value=f"{request.guidance:g} (without the LoRA: {row.guidance:g})")
    else:
        embed.add_field(name="Scheduler", value=request.scheduler)
    if isinstance(request, CompareStrengthRequest):
        embed.add_field(name="Strengths", value=", ".join(f"{strength:g}" for strength in request.strengths))
    if not (isinstance(request, CompareStepsRequest) and request.without_loras is not None):
        embed.add_field(name="Guidance", value=", ".join(f"{value:g}" for value in guidance_values(request)))
    embed.add_field(name="Size", value=f"{request.width}×{request.height}")
    if isinstance(request, GenerateRequest):
        embed.add_field(name="Images", value=str(request.count))
        if request.film:
            embed.add_field(
                name="Steps film", value=film or f"{counted(request.steps, 'frame')}, one per step", inline=False
            )
    if request.negative_prompt:
        embed.add_field(name="Negative prompt", value=_clip(request.negative_prompt, 1000), inline=False)
    if job_id is not None:
        embed.set_footer(text=f"job {job_id}")
    return embed


def model_name(model: str) -> str:
    """The model as shown on results and in Details; jobs from before models were recorded show "—"."""
    return model or "—"


def details_embed(record: JobRecord) -> discord.Embed:
    """The Details button's answer: every parameter, who asked and when."""
    embed = parameters_embed(record.request, job_id=record.job_id)
    embed.add_field(name="Requested by", value=f"<@{record.user_id}>")
    embed.add_field(name="Command", value=record.origin)
    embed.timestamp = record.created_at
    return embed


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def failure_text(failure: JobFailed, request: Request, *, cancelled_by_other: bool = False) -> str:
    """What the owner is told when their job ends without a result."""
    if failure.cancelled:
        return "A moderator cancelled your job." if cancelled_by_other else "Your job was cancelled."
    message = failure.message.strip()
    # Messages that already say what to do keep their own advice; the rest say when to retry.
    if failure.retryable and "try" not in message.lower():
        message = f"{message} Try again in a moment."
    return f"{_what_was_asked(request)} could not be made. {message}"


def _what_was_asked(request: Request) -> str:
    if not isinstance(request, GenerateRequest):
        return "Your comparison grid"
    return "Your images" if request.count > 1 else "Your image"

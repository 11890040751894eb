"""A comparison grid as people see it: the labelled image with each cell's change, the settled
cells framed, and the sweet spot in words. Used by the bot and the offline CLI alike."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypedDict, Unpack

from PIL import Image

from bot.pictures.over_seeds import seeds_summary
from bot.pictures.render import SECONDS_NOTE, caption_fits, format_seconds, grid_png, png_parameters, steps_label
from bot.pictures.sweet_spot import MEASURE_NOTE, RowChanges, format_change, measure_row, summary
from inference.parameters import lora_hashes_in
from inference.protocol import GeneratedImage
from inference.requests import (
    CompareSchedulersRequest,
    CompareStepsRequest,
    CompareStrengthRequest,
    GridRequest,
    row_requests,
)
from inference.settling import change_percent

LEGEND = "Δ = change from the previous step count · framed: where the row settles"


@dataclass(frozen=True)
class Grid:
    png: bytes
    summary: str  # where each row settles, in words


class GridFrame(TypedDict, total=False):
    """What every grid renderer writes around the cells, whatever the grid: `facts` ("model · scheduler ·
    seed 42") open the footer after the prompt, `device` names where the seconds were spent, and
    `parameters` (A1111's text) go in the PNG chunk. Each is left out by default."""

    facts: str | None
    device: str | None
    parameters: str | None


def frame_title(prompt: str, frame: GridFrame) -> tuple[str, str] | None:
    """The footer's opening (the prompt and the facts), where the frame has facts."""
    facts = frame.get("facts")
    return (prompt, facts) if facts else None


def seconds_note(frame: GridFrame) -> str:
    """What a cell's seconds are, and on which device where the frame names one."""
    device = frame.get("device")
    return f"{SECONDS_NOTE} on {device}" if device else SECONDS_NOTE


def cell_lora_hashes(images: Sequence[GeneratedImage]) -> dict[str, str]:
    """The short hash of every LoRA the cells ran with, from the `parameters` the worker wrote into
    each cell (the bot never sees the LoRA files): the grid's "Lora hashes"."""
    hashes: dict[str, str] = {}
    for image in images:
        hashes.update(lora_hashes_in(png_parameters(image.png)))
    return hashes


def grid_rows(request: GridRequest, images: Sequence[GeneratedImage]) -> list[tuple[int, RowChanges]]:
    """Each row of the grid with the index of its first cell: one row per scheduler (one for compare-steps)."""
    columns = len(request.steps)
    schedulers = request.schedulers if isinstance(request, CompareSchedulersRequest) else (request.scheduler,)
    if isinstance(request, CompareStepsRequest) and request.rows > 1:
        schedulers = request.lane_schedulers[::columns]  # a LoRA comparison (without, then with), or a row per seed
    rows = []
    for row, scheduler in enumerate(schedulers):
        first = row * columns
        pngs = [image.png for image in images[first : first + columns]]
        rows.append((first, measure_row(scheduler, request.steps, pngs)))
    return rows


def render_grid(request: GridRequest, images: Sequence[GeneratedImage], **frame: Unpack[GridFrame]) -> Grid:
    """The grid's PNG (axis labels on a scheduler grid, per-cell seconds and Δ, the settled cells
    framed, a footer saying what the numbers are and the `frame`) and the sweet-spot sentence."""
    if isinstance(request, CompareStepsRequest) and request.without_loras is not None:
        return render_lora_grid(request, images, **frame)
    if isinstance(request, CompareStepsRequest) and request.seeds > 1:
        return render_seed_grid(request, images, **frame)
    rows = grid_rows(request, images)
    changes: dict[int, float] = {}
    marked = set()
    for first, row in rows:
        for position, index in enumerate(row.order):
            if position:  # the first step count has nothing before it
                changes[first + index] = row.changes[position]
        if row.settled is not None:
            marked.add(first + row.order[row.settled])
    scheduler_grid = isinstance(request, CompareSchedulersRequest)
    row_labels = request.schedulers if isinstance(request, CompareSchedulersRequest) else ()
    texts = {}
    for index, image in enumerate(images):
        parts = [] if scheduler_grid else [steps_label(image.steps)]
        if image.steps_ran is not None:  # from an input image: the steps of its schedule that ran
            parts.append(f"{image.steps_ran} ran")
        parts.append(format_seconds(image.seconds))
        if index in changes:
            parts.append(format_change(changes[index]))
        texts[id(image)] = " · ".join(parts)
    png = grid_png(
        images,
        caption=lambda image: texts[id(image)],
        title=frame_title(request.prompt, frame),
        footer=f"{seconds_note(frame)}\n{LEGEND}"
        + (f" · from the image at strength {request.strength:g}" if request.image else ""),
        columns=len(request.steps) if scheduler_grid else None,
        row_labels=row_labels,
        column_labels=[steps_label(steps) for steps in request.steps] if scheduler_grid else (),
        marked=marked,
        parameters=frame.get("parameters"),
    )
    return Grid(png, summary([row for _, row in rows]))


STRENGTH_LEGEND = "strength = how much of the schedule runs over the image: of 30 steps at 0.6, the last 18 run"


def strength_caption(image: GeneratedImage) -> str:
    """A strength grid cell's words: "30 steps · strength 0.6 · 18 ran · 0.52s"; in a cell too narrow for
    all of it, the seconds are left out first (the steps that ran always show)."""
    ran = image.steps if image.steps_ran is None else image.steps_ran
    words = f"{steps_label(image.steps)} · strength {image.strength:g} · {ran} ran"
    timed = f"{words} · {format_seconds(image.seconds)}"
    return timed if caption_fits(timed, image.width) else words


def render_strength_grid(
    request: CompareStrengthRequest, images: Sequence[GeneratedImage], **frame: Unpack[GridFrame]
) -> Grid:
    """A strength grid's PNG: a row per step count, a column per strength, every caption saying the steps that
    ran; and in words, each row's steps that ran and how far each cell moved from the input image."""
    captions = {id(image): strength_caption(image) for image in images}
    seconds = seconds_note(frame)
    if not all(" ran · " in captions[id(image)] for image in images):  # cells too narrow for their seconds
        where = f" on {device}" if (device := frame.get("device")) else ""
        seconds = f"{format_seconds(sum(image.seconds for image in images))} of batched compute{where}, all cells"
    png = grid_png(
        images,
        caption=lambda image: captions[id(image)],
        title=frame_title(request.prompt, frame),
        footer=f"{seconds}\n{STRENGTH_LEGEND}",
        columns=len(request.strengths),
        parameters=frame.get("parameters"),
    )
    return Grid(png, strength_summary(request, images))


def strength_summary(request: CompareStrengthRequest, images: Sequence[GeneratedImage]) -> str:
    """Each row in words: "30 steps at strength 0.3, 0.6, 0.9 ran 9, 18, 27 steps, moving Δ 6%, 14%, 31% from
    the input image." (Δ = the mean colour change, as the step grids measure it.)"""
    source = Image.open(io.BytesIO(request.image)).convert("RGB")
    columns = len(request.strengths)
    rows = []
    for row, steps in enumerate(request.steps):
        cells = images[row * columns : (row + 1) * columns]
        ran = ", ".join(str(image.steps_run) for image in cells)
        moved = ", ".join(format_change(_change_from(source, image)).removeprefix("Δ ") for image in cells)
        strengths = ", ".join(f"{image.strength:g}" for image in cells)
        rows.append(f"{steps_label(steps)} at strength {strengths} ran {ran} steps, moving Δ {moved}")
    return f"{'; '.join(rows)} from the input image. (Δ = mean colour change.)"


def _change_from(source: Image.Image, image: GeneratedImage) -> float:
    with Image.open(io.BytesIO(image.png)) as cell:
        picture = cell.convert("RGB")
    if picture.size != source.size:  # a withheld cell is a small neutral tile
        source = source.resize(picture.size)
    return change_percent(source, picture)


# --- a LoRA comparison: the row without the LoRA above the row with it ---------------------------


def lora_row_labels(request: CompareStepsRequest) -> tuple[str, str]:
    """Each row's name with its scheduler and guidance: "without lcm · Euler a, CFG 7.5", "with lcm 1 · LCM, CFG 1"."""
    plain, with_loras = row_requests(request)
    names = ", ".join(name for name, _ in request.loras)
    weighted = ", ".join(f"{name} {weight:g}" for name, weight in request.loras)
    return (
        f"without {names} · {plain.scheduler}, CFG {plain.guidance:g}",
        f"with {weighted} · {with_loras.scheduler}, CFG {with_loras.guidance:g}",
    )


def lora_summary(request: CompareStepsRequest, rows: Sequence[RowChanges]) -> str:
    """Where each row settles in words: "with lcm it settles at 4 steps; without, it settles at 20 steps"."""
    plain, with_loras = rows
    names = ", ".join(name for name, _ in request.loras)
    text = f"with {names} it {_row_words(with_loras)}; without, it {_row_words(plain)}"
    return summary([]).replace("For this prompt and seed: ", f"For this prompt and seed: {text}", 1)


def _row_words(row: RowChanges) -> str:
    """A row's sentence without its scheduler's name: "settles at 20 steps"."""
    return row.describe().removeprefix(f"{row.scheduler} ")


def render_lora_grid(
    request: CompareStepsRequest, images: Sequence[GeneratedImage], **frame: Unpack[GridFrame]
) -> Grid:
    """A LoRA comparison's grid: two rows (without, then with the LoRA) named with their scheduler and
    guidance, step counts over the columns, each cell's seconds and Δ, each row's settled cell framed."""
    rows = grid_rows(request, images)
    png = rows_png(request, images, rows, lora_row_labels(request), frame)
    return Grid(png, lora_summary(request, [row for _, row in rows]))


def render_seed_grid(
    request: CompareStepsRequest, images: Sequence[GeneratedImage], **frame: Unpack[GridFrame]
) -> Grid:
    """A sweet spot over seeds: a row per seed, named with it (any row is that seed's /imagine), step counts
    over the columns, each row's settled cell framed; in words, the median settle point and its spread."""
    rows = grid_rows(request, images)
    labels = [f"seed {seed}" for seed in request.row_seeds]
    words = seeds_summary([row for _, row in rows], request.row_seeds)
    headline = words.removesuffix(f" {MEASURE_NOTE}")  # the picture's legend says what Δ and settled are
    png = rows_png(request, images, rows, labels, frame, note=headline)
    return Grid(png, words)


def rows_png(
    request: CompareStepsRequest,
    images: Sequence[GeneratedImage],
    rows: Sequence[tuple[int, RowChanges]],
    row_labels: Sequence[str],
    frame: GridFrame,
    *,
    note: str = "",
) -> bytes:
    """A steps grid of several rows (LoRA comparison, seeds): the rows named, step counts over the columns,
    each cell's seconds and Δ, each row's settled cell framed; `note`, a line of words, over the legend."""
    texts: dict[int, str] = {}
    marked = set()
    for first, row in rows:
        for position, index in enumerate(row.order):
            parts = [format_seconds(images[first + index].seconds)]
            if position:
                parts.append(format_change(row.changes[position]))
            texts[id(images[first + index])] = " · ".join(parts)
        if row.settled is not None:
            marked.add(first + row.order[row.settled])
    return grid_png(
        images,
        caption=lambda image: texts[id(image)],
        title=frame_title(request.prompt, frame),
        footer="\n".join(line for line in (note, seconds_note(frame), LEGEND) if line),
        columns=len(request.steps),
        row_labels=row_labels,
        column_labels=[steps_label(steps) for steps in request.steps],
        marked=marked,
        parameters=frame.get("parameters"),
    )

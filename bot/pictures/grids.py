"""A comparison grid as people see it: the labelled image with each cell's change, the settled
cells framed, and the sweet spot in words. Used by the bot and the offline CLI alike."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bot.pictures.render import SECONDS_NOTE, format_seconds, grid_png, png_parameters, steps_label
from bot.pictures.sweet_spot import RowChanges, format_change, measure_row, summary
from inference.parameters import lora_hashes_in
from inference.protocol import CompareSchedulersRequest, GeneratedImage, GridRequest

LEGEND = "Δ = change from the previous step count · framed: where the row settles"


@dataclass(frozen=True)
class Grid:
    png: bytes
    summary: str  # where each row settles, in words


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
    rows = []
    for row, scheduler in enumerate(schedulers):
        first = row * columns
        pngs = [image.png for image in images[first : first + columns]]
        rows.append((first, measure_row(scheduler, request.steps, pngs)))
    return rows


def render_grid(
    request: GridRequest,
    images: Sequence[GeneratedImage],
    *,
    facts: str | None = None,
    device: str | None = None,
    parameters: str | None = None,
) -> Grid:
    """The grid's PNG (axis labels on a scheduler grid, per-cell seconds and Δ, the settled cells
    framed, a footer saying what the numbers are, `parameters` in its PNG chunk) and the sweet-spot
    sentence. With `facts` ("model · scheduler · seed 42") the footer opens with the prompt and them;
    `device` names where the seconds were spent."""
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
        parts.append(format_seconds(image.seconds))
        if index in changes:
            parts.append(format_change(changes[index]))
        texts[id(image)] = " · ".join(parts)
    seconds_note = f"{SECONDS_NOTE} on {device}" if device else SECONDS_NOTE
    png = grid_png(
        images,
        caption=lambda image: texts[id(image)],
        title=(request.prompt, facts) if facts else None,
        footer=f"{seconds_note}\n{LEGEND}",
        columns=len(request.steps) if scheduler_grid else None,
        row_labels=row_labels,
        column_labels=[steps_label(steps) for steps in request.steps] if scheduler_grid else (),
        marked=marked,
        parameters=parameters,
    )
    return Grid(png, summary([row for _, row in rows]))

"""A stop-early grid (`/compare-steps stop_early: True`): the honest N-step runs in the first row, and under
each the longest run stopped at that step, its predicted clean image (x0) there, with the noise (σ) it had
left and how far it is from the honest run above (the sweet-spot measure)."""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Sequence

from PIL import Image

from bot.pictures.grids import Grid, GridFrame, frame_title, grid_rows, seconds_note
from bot.pictures.render import format_seconds, grid_png, steps_label
from bot.pictures.sweet_spot import format_change, summary
from inference.parameters import grid_infotext
from inference.protocol import GeneratedImage
from inference.requests import CompareStepsRequest
from inference.settling import change_percent

LEGEND = (
    "top: honest runs of that many steps · below: the longest run stopped there, its predicted clean image "
    "(x0), the noise σ it had left, Δ from the run above · framed: where the top row settles"
)


def stopped_cells(request: CompareStepsRequest, images: Sequence[GeneratedImage]) -> list[tuple[GeneratedImage, str]]:
    """The second row in step order: each stopped cell and its caption. The longest step count's cell is
    that run itself, finished. A longest run whose pictures were withheld gives its tile everywhere."""
    order = sorted(range(len(images)), key=lambda i: request.steps[i])
    longest = images[order[-1]]
    total = request.steps[order[-1]]
    shorter = [request.steps[i] for i in order[:-1]]
    frames = longest.frames if len(longest.frames) == len(shorter) else ()
    cells = []
    for position, steps in enumerate(shorter):
        png = frames[position] if frames else longest.png
        left = longest.frame_sigmas[steps] if steps < len(longest.frame_sigmas) else None
        cell = dataclasses.replace(longest, png=png, steps=steps, frames=(), seconds=0.0)
        parts = [f"x0 at {steps}/{total}"]
        if left is not None:
            parts.append(f"σ {left:.2g} left")
        if frames:
            honest = images[order[position]]
            parts.append(format_change(change_percent(_image(honest.png), _image(png))))
        cells.append((cell, " · ".join(parts)))
    cells.append((dataclasses.replace(longest), f"the {total}-step run"))  # its own place in the grid
    return cells


def stop_early_summary(request: CompareStepsRequest, images: Sequence[GeneratedImage]) -> str:
    """The top row's sweet spot in words, then how far each stopped run is from the honest one."""
    rows = summary([row for _, row in grid_rows(request, images)])
    cells = stopped_cells(request, images)[:-1]
    total = max(request.steps)
    changes = [caption.rsplit(" · ", 1)[-1] for _, caption in cells if "Δ" in caption]
    if len(changes) != len(cells):
        return rows
    pairs = ", ".join(f"{steps_label(cell.steps)} {change}" for (cell, _), change in zip(cells, changes, strict=True))
    return (
        f"{rows} Stopped early vs fewer steps: the {total}-step run's x0, stopped at each step count, "
        f"differs from an honest run of that many steps by {pairs}."
    )


def render_stop_early_grid(
    request: CompareStepsRequest,
    images: Sequence[GeneratedImage],
    *,
    model: str,
    facts: str | None = None,
    device: str | None = None,
) -> Grid:
    """Two rows over the step counts: the honest runs (per-cell seconds and Δ from the previous step
    count, the settled cell framed) and the longest run stopped at each; `parameters` as a steps grid's."""
    order = sorted(range(len(images)), key=lambda i: request.steps[i])
    top = [images[i] for i in order]
    rows = grid_rows(request, images)
    _, row = rows[0]
    changes = {row.order[position]: row.changes[position] for position in range(1, len(row.order))}
    captions = {}
    for index in order:
        parts = [format_seconds(images[index].seconds)]
        if index in changes:
            parts.append(format_change(changes[index]))
        captions[id(images[index])] = " · ".join(parts)
    stopped = stopped_cells(request, images)
    cells = [*top, *(cell for cell, _ in stopped[:-1]), stopped[-1][0]]
    texts = [captions[id(image)] for image in top] + [caption for _, caption in stopped]
    marked = {order.index(row.order[row.settled])} if row.settled is not None else set()
    total = max(request.steps)
    frame: GridFrame = {"facts": facts, "device": device}
    by_cell = {id(cell): text for cell, text in zip(cells, texts, strict=True)}
    png = grid_png(
        cells,
        caption=lambda image: by_cell[id(image)],
        title=frame_title(request.prompt, frame),
        footer=f"{seconds_note(frame)}\n{LEGEND}",
        columns=len(top),
        row_labels=["N-step runs", f"{total}-step run stopped"],
        column_labels=[steps_label(image.steps) for image in top],
        marked=marked,
        parameters=grid_infotext(request, model=model) + ", Stop early: True",
    )
    return Grid(png, stop_early_summary(request, images))


def _image(png: bytes) -> Image.Image:
    return Image.open(io.BytesIO(png))

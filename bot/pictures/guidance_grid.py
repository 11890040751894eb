"""A guidance grid as people see it (`/compare-guidance`): guidance values as columns, step counts as
rows, each cell's change from its left neighbour (the sweet-spot measure of `bot.pictures.sweet_spot`),
the cell from which more guidance stops changing the image framed, and that in words."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Unpack

from bot.pictures.grids import Grid, GridFrame, frame_title, seconds_note
from bot.pictures.render import format_seconds, grid_png, png_parameters, steps_label
from bot.pictures.sweet_spot import changes_along, format_change, settle_index
from inference.parameters import guidance_grid_infotext
from inference.protocol import GeneratedImage
from inference.requests import CompareGuidanceRequest
from inference.settling import SETTLED_BELOW

LEGEND = "Δ = change from the guidance value on the left · framed: where more guidance stops changing the image"
# What the worker writes in a FLUX-dev cell's PNG text (Forge's name for its distilled guidance).
DISTILLED_FIELD = "Distilled CFG Scale"


@dataclass(frozen=True)
class GuidanceRow:
    """One row of a guidance grid (one step count), its cells by ascending guidance."""

    steps: int
    order: tuple[int, ...]  # the row's cells (their index in the row) by ascending guidance
    guidances: tuple[float, ...]
    changes: tuple[float, ...]  # from the next lower guidance; 0.0 for the first cell
    settled: int | None  # index into `guidances` from which every further change is small

    def describe(self, name: str = "guidance") -> str:
        """The row in words, e.g. "at 30 steps, the image settles from guidance 7.5"."""
        where = f"at {steps_label(self.steps)}"
        if self.settled is not None:
            return f"{where}, the image settles from {name} {self.guidances[self.settled]:g}"
        largest = max(range(1, len(self.changes)), key=lambda i: self.changes[i])
        return (
            f"{where}, it still changes with every {name} value (most between {self.guidances[largest - 1]:g} "
            f"and {self.guidances[largest]:g}: {format_change(self.changes[largest])})"
        )


def measure_guidance_row(steps: int, guidances: Sequence[float], pngs: Sequence[bytes]) -> GuidanceRow:
    """Each cell's change from the next lower guidance of its row."""
    order, changes = changes_along(guidances, pngs)
    return GuidanceRow(steps, order, tuple(guidances[i] for i in order), changes, settle_index(changes))


def guidance_rows(request: CompareGuidanceRequest, images: Sequence[GeneratedImage]) -> list[GuidanceRow]:
    """Each row of the grid (one per step count), measured."""
    columns = len(request.guidances)
    return [
        measure_guidance_row(steps, request.guidances, [image.png for image in images[i * columns : (i + 1) * columns]])
        for i, steps in enumerate(request.steps)
    ]


def is_distilled(images: Sequence[GeneratedImage]) -> bool:
    """Whether the worker ran the cells at FLUX-dev's distilled guidance (it says so in their PNG text)."""
    return any(DISTILLED_FIELD in (png_parameters(image.png) or "") for image in images)


def guidance_summary(rows: Sequence[GuidanceRow], *, distilled: bool = False) -> str:
    """The rows in words: "For this prompt and seed: at 30 steps, the image settles from guidance 7.5. (…)"."""
    name = "distilled guidance" if distilled else "guidance"
    text = "; ".join(row.describe(name) for row in rows)
    return (
        f"For this prompt and seed: {text}. (Δ = mean colour change from the next lower {name}; "
        f"settled = every later Δ under {SETTLED_BELOW:g}%.)"
    )


def render_guidance_grid(
    request: CompareGuidanceRequest, images: Sequence[GeneratedImage], **frame: Unpack[GridFrame]
) -> Grid:
    """The grid's PNG (guidance values on top, step counts on the left, per-cell seconds and Δ, the
    settled cells framed, a footer saying what the numbers are and the `frame`) and the sweet spot in words."""
    rows = guidance_rows(request, images)
    distilled = is_distilled(images)
    columns = len(request.guidances)
    changes: dict[int, float] = {}
    marked = set()
    for number, row in enumerate(rows):
        first = number * columns
        for position, index in enumerate(row.order):
            if position:
                changes[first + index] = row.changes[position]
        if row.settled is not None:
            marked.add(first + row.order[row.settled])
    texts = []
    for index, image in enumerate(images):
        parts = [format_seconds(image.seconds)]
        if index in changes:
            parts.append(format_change(changes[index]))
        texts.append(" · ".join(parts))
    captions = {id(image): text for image, text in zip(images, texts, strict=True)}
    label = "distilled" if distilled else "guidance"
    png = grid_png(
        images,
        caption=lambda image: captions[id(image)],
        title=frame_title(request.prompt, frame),
        footer=f"{seconds_note(frame)}\n{LEGEND}",
        columns=columns,
        row_labels=[steps_label(steps) for steps in request.steps],
        column_labels=[f"{label} {guidance:g}" for guidance in request.guidances],
        marked=marked,
        parameters=frame.get("parameters"),
    )
    return Grid(png, guidance_summary(rows, distilled=distilled))


def render_guidance_result(
    request: CompareGuidanceRequest,
    images: Sequence[GeneratedImage],
    *,
    model: str,
    facts: str | None = None,
    device: str | None = None,
) -> Grid:
    """The grid of a finished guidance comparison with its A1111 X/Y/Z `parameters` (the bot and the CLI)."""
    parameters = guidance_grid_infotext(request, model=model, distilled=is_distilled(images))
    return render_guidance_grid(request, images, facts=facts, device=device, parameters=parameters)

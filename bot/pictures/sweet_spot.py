"""How much a grid's images still change from one step count to the next, and where a row settles.

The measure itself (mean ΔE*ab on downscaled images) is inference.settling's, which the worker's
`steps: auto` uses too: one measure for "settled" on both sides.
A row *settles* at the first step count after which every change stays under `SETTLED_BELOW`;
a row whose last change is still at or over it has not settled within the grid.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from inference.requests import ANCESTRAL_SCHEDULERS as ANCESTRAL
from inference.settling import SETTLED_BELOW, change_percent


def settle_index(changes: Sequence[float]) -> int | None:
    """Index of the first cell after which every change is under SETTLED_BELOW, or None.

    `changes[i]` is cell i's change from cell i-1 (`changes[0]`, the first cell's, is ignored).
    The last cell never counts as settled: nothing after it was measured.
    """
    for index in range(len(changes) - 1):
        if all(change < SETTLED_BELOW for change in changes[index + 1 :]):
            return index
    return None


@dataclass(frozen=True)
class RowChanges:
    """One row of a grid (one scheduler) in ascending step order, with each cell's change."""

    scheduler: str
    order: tuple[int, ...]  # the row's images (their index in the input) by ascending step count
    steps: tuple[int, ...]
    changes: tuple[float, ...]  # from the previous step count; 0.0 for the first cell (nothing before it)
    settled: int | None  # index into `steps` where the row settles, None if it doesn't

    def describe(self) -> str:
        """The row in words, e.g. "DPM++ 2M Karras settles at 20 steps"."""
        if self.settled is not None:
            return f"{self.scheduler} settles at {_steps(self.steps[self.settled])}"
        if all(change >= SETTLED_BELOW for change in self.changes[1:]):
            why = " (ancestral samplers add fresh noise)" if self.scheduler in ANCESTRAL else ""
            return f"{self.scheduler} keeps changing at every step count{why}"
        last = self.changes[-1]
        return (
            f"{self.scheduler} has not settled by {_steps(self.steps[-1])} "
            f"(still {format_change(last)} from {self.steps[-2]})"
        )


def changes_along(values: Sequence[float], pngs: Sequence[bytes]) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """A row's cells ordered by their axis value (step count, guidance …): that order, and each cell's
    change from the cell before it in it (0 for the first)."""
    order = tuple(sorted(range(len(values)), key=lambda i: values[i]))
    images = [Image.open(io.BytesIO(pngs[i])) for i in order]
    return order, (0.0, *(change_percent(a, b) for a, b in itertools.pairwise(images)))


def measure_row(scheduler: str, steps: Sequence[int], pngs: Sequence[bytes]) -> RowChanges:
    """Each cell's change from the previous step count (cells are ordered by step count here)."""
    order, changes = changes_along(steps, pngs)
    return RowChanges(scheduler, order, tuple(steps[i] for i in order), changes, settle_index(changes))


def format_change(percent: float) -> str:
    """ "Δ 4%", "Δ 0.8%": a cell's change, small enough to fit under the image."""
    return f"Δ {percent:.1f}%" if percent < 9.95 else f"Δ {percent:.0f}%"


def summary(rows: Sequence[RowChanges]) -> str:
    """The rows in words: "For this prompt and seed: DDIM settles at 20 steps; Euler a keeps changing …"."""
    text = "; ".join(row.describe() for row in rows)
    return f"For this prompt and seed: {text}. {MEASURE_NOTE}"


MEASURE_NOTE = (
    f"(Δ = mean colour change from the previous step count; settled = every later Δ under {SETTLED_BELOW:g}%.)"
)


def _steps(count: int) -> str:
    return f"{count} step{'' if count == 1 else 's'}"

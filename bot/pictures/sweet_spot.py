"""How much a grid's images still change from one step count to the next, and where a row settles.

The measure (pure, on this run's finished images): both images downscaled to at most
`SAMPLE_SIDE` pixels on the long side with a box filter (so pixel-level sampler noise averages out
and the composition counts), converted from sRGB to CIELAB (D65), and the mean CIE76 colour
difference ΔE*ab over the pixels, written as a percent of the lightness range (ΔE 100 = 100%).
A row *settles* at the first step count after which every change stays under `SETTLED_BELOW`;
a row whose last change is still at or over it has not settled within the grid.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

SAMPLE_SIDE = 64
# Percent: a mean ΔE*ab of about 2.3 is the textbook just-noticeable difference of two colours.
SETTLED_BELOW = 2.0
# Schedulers that draw fresh noise at every step: more steps means a different image, not a finer one.
ANCESTRAL = ("Euler a", "DPM2 a", "DPM++ 2M SDE", "DPM++ SDE")

_SRGB_TO_XYZ = np.array(
    [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]]
)
_D65_WHITE = np.array([0.95047, 1.0, 1.08883])


def to_lab(image: Image.Image) -> np.ndarray:
    """CIELAB (D65) of an sRGB image downscaled to at most SAMPLE_SIDE on its long side: HxWx3 float."""
    rgb = image.convert("RGB")
    scale = SAMPLE_SIDE / max(rgb.size)
    if scale < 1:
        size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
        rgb = rgb.resize(size, Image.Resampling.BOX)
    srgb = np.asarray(rgb, dtype=np.float64) / 255
    linear = np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)
    xyz = linear @ _SRGB_TO_XYZ.T / _D65_WHITE
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def change_percent(before: Image.Image, after: Image.Image) -> float:
    """The mean ΔE*ab between two images of one size, downscaled, as a percent (0 = identical)."""
    if before.size != after.size:
        raise ValueError(f"images of different sizes: {before.size} and {after.size}")
    difference = to_lab(after) - to_lab(before)
    return float(np.sqrt((difference**2).sum(axis=-1)).mean())


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

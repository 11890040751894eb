"""How much an image still changes (the sweet-spot measure), and `steps: auto`'s rule for when a run has settled.

Shared by the bot (a grid's Δ and where a row settles: bot.pictures.sweet_spot) and the worker (an auto
lane's stop), so both judge "settled" by one measure. numpy and Pillow only: the bot may import it.

The measure (pure, on finished images): both images downscaled to at most `SAMPLE_SIDE` pixels on the
long side with a box filter (so pixel-level sampler noise averages out and the composition counts),
converted from sRGB to CIELAB (D65), and the mean CIE76 colour difference ΔE*ab over the pixels, written
as a percent of the lightness range (ΔE 100 = 100%).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

SAMPLE_SIDE = 64
# Percent: a mean ΔE*ab of about 2.3 is the textbook just-noticeable difference of two colours.
SETTLED_BELOW = 2.0
# An auto run is checked this many times over its longest step count (every `check_every` steps), and
# stops once this many checks in a row changed under SETTLED_BELOW.
AUTO_CHECKS = 10
SETTLED_CHECKS = 2

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


def lab_change(before: np.ndarray, after: np.ndarray) -> float:
    """The mean ΔE*ab between two `to_lab` arrays of one shape, as a percent."""
    return float(np.sqrt(((after - before) ** 2).sum(axis=-1)).mean())


def change_percent(before: Image.Image, after: Image.Image) -> float:
    """The mean ΔE*ab between two images of one size, downscaled, as a percent (0 = identical)."""
    if before.size != after.size:
        raise ValueError(f"images of different sizes: {before.size} and {after.size}")
    return lab_change(to_lab(before), to_lab(after))


def check_every(most_steps: int) -> int:
    """Steps between an auto run's checks: AUTO_CHECKS over its longest count, at least 2 steps apart
    (each check decodes the run's predicted clean image once)."""
    return max(2, round(most_steps / AUTO_CHECKS))


class SettleWatch:
    """One auto run's checks: fed its predicted clean image (x0) at every `every`-th step, it says when
    SETTLED_CHECKS changes in a row were under SETTLED_BELOW."""

    def __init__(self, most_steps: int) -> None:
        self.every = check_every(most_steps)
        self.changes: list[float] = []  # each check's change from the one before (none for the first)
        self.checked = 0  # the step of the last check
        self._last: np.ndarray | None = None

    def due(self, step: int) -> bool:
        """Step `step` (1-based, just done) is a check not yet made (a second-order scheduler calls the
        model twice a step)."""
        return step > self.checked and step % self.every == 0

    def observe(self, step: int, image: Image.Image) -> bool:
        """Take the x0 image of check step `step`; True once the run has settled."""
        self.checked = step
        lab = to_lab(image)
        if self._last is not None:
            self.changes.append(lab_change(self._last, lab))
        self._last = lab
        recent = self.changes[-SETTLED_CHECKS:]
        return len(recent) == SETTLED_CHECKS and all(change < SETTLED_BELOW for change in recent)

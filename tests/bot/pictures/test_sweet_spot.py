"""The sweet-spot measure on constructed images: pure numpy/Pillow, no model."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from bot.pictures.sweet_spot import (
    SETTLED_BELOW,
    RowChanges,
    change_percent,
    format_change,
    measure_row,
    settle_index,
    summary,
)


def picture(shift: int = 0, size: int = 128, background: tuple[int, int, int] = (40, 90, 160)) -> Image.Image:
    """A sky with a red square whose position moves by `shift` pixels."""
    image = Image.new("RGB", (size, size), background)
    ImageDraw.Draw(image).rectangle((30 + shift, 40, 70 + shift, 80), fill=(220, 40, 30))
    return image


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def test_identical_images_change_by_zero() -> None:
    assert change_percent(picture(), picture()) == 0.0


def test_larger_differences_measure_larger_in_the_expected_order() -> None:
    base = picture()
    nudged, moved, recoloured = picture(shift=2), picture(shift=20), picture(background=(230, 230, 230))
    changes = [change_percent(base, other) for other in (nudged, moved, recoloured)]
    assert 0 < changes[0] < changes[1] < changes[2]


def test_black_against_white_is_the_full_lightness_range() -> None:
    black, white = Image.new("RGB", (32, 32), (0, 0, 0)), Image.new("RGB", (32, 32), (255, 255, 255))
    assert change_percent(black, white) == pytest.approx(100, abs=0.01)


def test_pixel_noise_counts_less_than_moving_the_subject() -> None:
    rng = np.random.default_rng(0)
    noisy = np.asarray(picture(), dtype=np.int16) + rng.integers(-25, 26, size=(128, 128, 3))
    speckled = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
    assert change_percent(picture(), speckled) < change_percent(picture(), picture(shift=20))


def test_images_of_different_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="different sizes"):
        change_percent(picture(size=64), picture(size=128))


@pytest.mark.parametrize(
    ("changes", "settled"),
    [
        ([0, 30, 10, 1, 0.5], 2),  # the last two changes are under the threshold: settled at the third cell
        ([0, 1, 1, 1], 0),  # nothing changes much: the first cell already is the image
        ([0, 30, 1, 5], None),  # the last change is over the threshold: not settled within the grid
        ([0, 30, 20, 10], None),
        ([0, 1], 0),
        ([0], None),
    ],
)
def test_a_row_settles_at_the_first_cell_after_which_every_change_stays_small(
    changes: list[float], settled: int | None
) -> None:
    assert settle_index(changes) == settled


def test_a_row_is_measured_in_step_order_whatever_the_cells_order() -> None:
    # Cells given as 20, 5, 10 steps: the squares move less and less as the steps grow.
    images = {5: picture(shift=0), 10: picture(shift=12), 20: picture(shift=13)}
    row = measure_row("DDIM", (20, 5, 10), [png(images[20]), png(images[5]), png(images[10])])
    assert row.steps == (5, 10, 20) and row.order == (1, 2, 0)
    assert row.changes[0] == 0.0 and row.changes[1] > SETTLED_BELOW > row.changes[2] > 0
    assert row.settled == 1
    assert row.describe() == "DDIM settles at 10 steps"


def test_rows_that_never_settle_say_so_honestly() -> None:
    ancestral = RowChanges("Euler a", (0, 1, 2), (5, 10, 20), (0.0, 8.0, 6.0), None)
    wobbly = RowChanges("DDIM", (0, 1, 2), (5, 10, 20), (0.0, 1.0, 6.0), None)
    settled = RowChanges("UniPC", (0, 1), (1, 2), (0.0, 0.4), 0)
    text = summary([ancestral, wobbly, settled])
    assert "Euler a keeps changing at every step count (ancestral samplers add fresh noise)" in text
    assert "DDIM has not settled by 20 steps (still Δ 6.0% from 10)" in text
    assert "UniPC settles at 1 step" in text
    assert text.startswith("For this prompt and seed: ")


def test_changes_read_short() -> None:
    assert [format_change(value) for value in (0.04, 4.0, 12.4)] == ["Δ 0.0%", "Δ 4.0%", "Δ 12%"]

"""Where a grid's rows settle and how that reads, on constructed images.

The measure itself is tested in tests/inference/test_settling.py.
"""

from __future__ import annotations

import pytest

from bot.pictures.sweet_spot import (
    RowChanges,
    format_change,
    measure_row,
    settle_index,
    summary,
)
from inference.settling import SETTLED_BELOW
from tests.inference.settling_pictures import picture, png


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

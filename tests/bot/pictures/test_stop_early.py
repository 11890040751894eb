"""The stop-early grid: honest runs on top, the longest run stopped at each step count below, captioned
with the noise left and the Δ from the honest run above; in words, how far stopping early is from fewer steps."""

from __future__ import annotations

import io

from PIL import Image

from bot.pictures.stop_early import render_stop_early_grid, stopped_cells
from inference.protocol import GeneratedImage
from inference.requests import CompareStepsRequest
from tests.inference.settling_pictures import picture, png

SIDE = 96
REQUEST = CompareStepsRequest("a fox", steps=(2, 4, 8), scheduler="Euler", seed=3, width=SIDE, height=SIDE,
                              stop_early=True)  # fmt: skip
SIGMAS = (14.6, 7.0, 3.1, 1.6, 0.8, 0.4, 0.2, 0.1)


def image(shift: int, steps: int, **extra: object) -> GeneratedImage:
    return GeneratedImage(png(picture(shift, SIDE)), 3, steps, SIDE, SIDE, 0.25 * steps, **extra)  # type: ignore[arg-type]


def cells() -> list[GeneratedImage]:
    frames = (png(picture(20, SIDE)), png(picture(5, SIDE)))  # the 8-step run's x0 at 2 and 4 steps
    return [image(0, 2), image(4, 4), image(5, 8, frames=frames, frame_sigmas=SIGMAS)]


def test_the_stopped_row_says_which_run_it_is_the_noise_left_and_the_change_from_the_honest_run() -> None:
    row = stopped_cells(REQUEST, cells())
    captions = [caption for _, caption in row]
    assert captions[0].startswith("x0 at 2/8 · σ 3.1 left · Δ ") and captions[1].startswith("x0 at 4/8 · σ 0.8 left")
    assert captions[2] == "the 8-step run"
    assert [cell.steps for cell, _ in row] == [2, 4, 8] and row[0][0].seconds == 0.0


def test_the_grid_has_two_labelled_rows_and_says_how_far_stopping_early_is_from_fewer_steps() -> None:
    grid = render_stop_early_grid(REQUEST, cells(), model="tiny", facts="tiny · Euler · seed 3")
    picture_ = Image.open(io.BytesIO(grid.png))
    assert picture_.width > 3 * SIDE and picture_.height > 2 * SIDE
    assert "Stopped early vs fewer steps: the 8-step run's x0, stopped at each step count, differs from an " \
           "honest run of that many steps by 2 steps Δ " in grid.summary  # fmt: skip
    assert picture_.info["parameters"].endswith('X Type: Steps, X Values: "2, 4, 8", Stop early: True')


def test_a_longest_run_withheld_by_the_checker_fills_the_stopped_row_with_its_tile() -> None:
    withheld = [*cells()[:2], image(9, 8)]  # as_withheld drops the frames
    row = stopped_cells(REQUEST, withheld)
    assert all(cell.png == withheld[2].png for cell, _ in row)
    assert all("Δ" not in caption for _, caption in row)

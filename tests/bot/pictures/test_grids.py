"""Comparison grids as people see them: a strength grid's layout, captions and words, and the steps that
ran on a step grid that starts from an image."""

from __future__ import annotations

import dataclasses
import io

import pytest
from PIL import Image

import bot.pictures.grids
from bot.pictures.grids import STRENGTH_LEGEND, render_grid, render_strength_grid, strength_caption, strength_summary
from bot.pictures.render import cell_metrics
from inference.parameters import PNG_KEY
from inference.protocol import GeneratedImage
from inference.requests import CompareStepsRequest, CompareStrengthRequest, img2img_steps
from tests.bot.fakes import png_of


def strength_grid(size: int = 128, steps: tuple[int, ...] = (30,)) -> CompareStrengthRequest:
    image = png_of(size, size, (200, 40, 40))
    return CompareStrengthRequest("a fox", strengths=(0.3, 0.6, 0.9), steps=steps, width=size, height=size, image=image)


def cells_of(request: CompareStrengthRequest) -> list[GeneratedImage]:
    """A cell per lane; the stronger, the farther its colour from the input's red."""
    cells = []
    for steps, strength in zip(request.lane_steps, request.lane_strengths, strict=True):
        colour = (200 - round(150 * strength), 40, 40 + round(150 * strength))
        ran = img2img_steps(steps, strength, flow=False)
        cells.append(GeneratedImage(png_of(request.width, request.height, colour), 1, steps, request.width,
                                    request.height, 0.01 * ran, steps_ran=ran, strength=strength))  # fmt: skip
    return cells


def test_a_strength_grid_cell_says_its_steps_strength_the_steps_that_ran_and_its_seconds() -> None:
    (cell, *_) = cells_of(strength_grid(512))
    assert strength_caption(cell) == "30 steps · strength 0.3 · 9 ran · 0.09s"


def test_a_narrow_cell_leaves_the_seconds_out_before_the_steps_that_ran() -> None:
    (*_, cell) = cells_of(strength_grid(256))
    assert strength_caption(cell) == "30 steps · strength 0.9 · 27 ran"


def test_a_strength_grid_has_a_column_per_strength_and_a_row_per_step_count() -> None:
    request = strength_grid(128, steps=(10, 30))
    grid = render_strength_grid(request, cells_of(request), facts="tiny · Euler a · seed 1", parameters="fox")
    with Image.open(io.BytesIO(grid.png)) as png:
        strip, gap, _ = cell_metrics(128)
        assert png.width == 3 * 128 + 4 * gap
        assert png.height > 2 * (128 + strip), "two rows of cells, then the footer"
        assert png.text[PNG_KEY] == "fox"
    assert grid.summary == (
        "10 steps at strength 0.3, 0.6, 0.9 ran 3, 6, 9 steps, moving Δ 42%, 80%, 110%; 30 steps at strength 0.3, "
        "0.6, 0.9 ran 9, 18, 27 steps, moving Δ 42%, 80%, 110% from the input image. (Δ = mean colour change.)"
    )


def test_the_strength_grid_explains_strength_in_its_footer(monkeypatch: pytest.MonkeyPatch) -> None:
    drawn: dict[str, object] = {}

    def grid_png(images: object, **options: object) -> bytes:
        drawn.update(options)
        return b""

    monkeypatch.setattr(bot.pictures.grids, "grid_png", grid_png)
    request = strength_grid()
    render_strength_grid(request, cells_of(request))
    assert drawn["columns"] == 3 and str(drawn["footer"]).endswith(STRENGTH_LEGEND)
    assert "of 30 steps at 0.6, the last 18 run" in STRENGTH_LEGEND


def test_a_step_grid_from_an_image_says_the_steps_each_cell_ran(monkeypatch: pytest.MonkeyPatch) -> None:
    captions: list[str] = []

    def grid_png(images: list[GeneratedImage], **options: object) -> bytes:
        caption = options["caption"]
        captions.extend(caption(image) for image in images)  # type: ignore[operator]
        drawn["footer"] = options["footer"]
        return b""

    drawn: dict[str, object] = {}
    monkeypatch.setattr(bot.pictures.grids, "grid_png", grid_png)
    request = CompareStepsRequest("a fox", steps=(10, 20), width=64, height=64, image=png_of(64, 64), strength=0.6)
    images = [GeneratedImage(png_of(64, 64), 1, steps, 64, 64, 0.5, steps_ran=ran, strength=0.6)
              for steps, ran in ((10, 6), (20, 12))]  # fmt: skip
    render_grid(request, images)
    assert captions[0] == "10 steps · 6 ran · 0.50s"
    assert captions[1].startswith("20 steps · 12 ran · 0.50s")
    assert str(drawn["footer"]).endswith("from the image at strength 0.6")


def test_the_strength_summary_measures_a_withheld_tile_of_another_size_too() -> None:
    request = strength_grid(64)
    cells = cells_of(request)
    cells[0] = dataclasses.replace(cells[0], png=png_of(32, 32))
    assert strength_summary(request, cells).startswith("30 steps at strength 0.3, 0.6, 0.9 ran 9, 18, 27 steps")


def test_a_grid_too_narrow_for_each_cells_seconds_gives_their_sum_in_its_footer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    drawn: dict[str, object] = {}

    def grid_png(images: object, **options: object) -> bytes:
        drawn.update(options)
        return b""

    monkeypatch.setattr(bot.pictures.grids, "grid_png", grid_png)
    request = strength_grid(256)
    render_strength_grid(request, cells_of(request), device="cpu")
    assert str(drawn["footer"]).startswith("0.54s of batched compute on cpu, all cells\n")

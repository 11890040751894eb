"""What of a result may be posted where it goes: a grid with one flagged cell among unflagged ones is drawn
with the neutral tile in that cell only, and every other cell's picture as it was."""

from __future__ import annotations

import dataclasses
import io

from PIL import Image

from bot.pictures.render import WITHHELD_BACKGROUND
from bot.replies.messages import encode_result_files
from bot.replies.screening import Screening
from inference.protocol import SafetyVerdict
from inference.requests import CompareStepsRequest
from tests.bot.fakes import png_of, record_for, result_for

COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 200, 20)]


def _colours(png: bytes) -> set[tuple[int, int, int]]:
    grid = Image.open(io.BytesIO(png)).convert("RGB")
    return {colour for _, colour in grid.getcolors(maxcolors=grid.width * grid.height)}


def test_one_flagged_cell_of_a_grid_is_the_neutral_tile_and_the_others_are_posted() -> None:
    request = CompareStepsRequest("a fox", steps=(2, 3, 4, 5), seed=3, width=128, height=128)
    result = result_for("job", request)
    images = tuple(
        dataclasses.replace(
            image, png=png_of(128, 128, colour), verdict=SafetyVerdict(i == 2, 0.9 if i == 2 else 0.1, "c")
        )
        for i, (image, colour) in enumerate(zip(result.images, COLOURS, strict=True))
    )
    result = dataclasses.replace(result, images=images)
    ordinary = encode_result_files(
        record_for(request), result, limit=10_000_000, screening=Screening(posts_flagged=False)
    )
    assert ordinary.withheld == 1 and ordinary.summary.startswith("1 grid cell withheld: the image checker flagged it")
    [grid] = ordinary.files
    colours = _colours(grid.data)
    assert {COLOURS[0], COLOURS[1], COLOURS[3], WITHHELD_BACKGROUND} <= colours, "the unflagged cells and the tile"
    assert COLOURS[2] not in colours, "nothing of the flagged cell's picture"
    adult = encode_result_files(record_for(request), result, limit=10_000_000, screening=Screening(posts_flagged=True))
    assert adult.withheld == 0 and set(COLOURS) <= _colours(adult.files[0].data)

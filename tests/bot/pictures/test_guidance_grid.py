"""The guidance grid's picture and words: each cell's Δ from its left neighbour (the sweet-spot measure),
where more guidance stops changing the image framed, axis labels, Forge's distilled guidance on FLUX-dev."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from bot.pictures.guidance_grid import (
    guidance_summary,
    measure_guidance_row,
    render_guidance_grid,
    render_guidance_result,
)
from bot.pictures.render import MARK, png_parameters
from inference.parameters import infotext
from inference.protocol import GeneratedImage
from inference.requests import CompareGuidanceRequest
from tests.inference.settling_pictures import picture, png

SIDE = 128


def cell(shift: int, *, text: str = "") -> GeneratedImage:
    image = picture(shift, SIDE)
    data = io.BytesIO()
    info = None
    if text:
        info = PngInfo()
        info.add_text("parameters", text)
    image.save(data, format="PNG", pnginfo=info)
    return GeneratedImage(data.getvalue(), seed=1, steps=20, width=SIDE, height=SIDE, seconds=0.5)


def test_a_row_is_measured_in_guidance_order_and_settles_where_later_changes_stay_small() -> None:
    # Guidance typed as 7, 1, 3: the subject moves a lot from 1 to 3, hardly after.
    row = measure_guidance_row(20, (7.0, 1.0, 3.0), [png(picture(31)), png(picture(0)), png(picture(30))])
    assert row.guidances == (1.0, 3.0, 7.0) and row.order == (1, 2, 0)
    assert row.changes[1] > 2 and row.changes[2] < 2
    assert row.settled == 1
    assert row.describe() == "at 20 steps, the image settles from guidance 3"


def test_a_row_that_keeps_changing_names_its_largest_step() -> None:
    row = measure_guidance_row(8, (1.0, 3.0, 5.0), [png(picture(0)), png(picture(10)), png(picture(40))])
    assert row.settled is None
    assert row.describe("distilled guidance").startswith(
        "at 8 steps, it still changes with every distilled guidance value (most between 3 and 5: Δ "
    )
    assert guidance_summary([row]).endswith("(Δ = mean colour change from the next lower guidance; settled = every "
                                            "later Δ under 2%.)")  # fmt: skip


def test_the_grid_has_a_column_per_guidance_a_row_per_step_count_and_frames_the_settled_cells() -> None:
    request = CompareGuidanceRequest("a fox", guidances=(1.0, 3.0, 7.0), steps=(10, 20), width=SIDE, height=SIDE)
    images = [cell(shift) for shift in (0, 30, 31)] * 2
    grid = render_guidance_grid(request, images, facts="tiny · Euler · seed 1", parameters="x")
    image = Image.open(io.BytesIO(grid.png)).convert("RGB")
    assert image.width > 3 * SIDE + 40 and image.height > 2 * SIDE  # row labels on the left, labels on top
    pixels = np.asarray(image)
    assert (pixels == MARK).all(axis=-1).sum() > 4 * SIDE  # two framed cells (guidance 3 in each row)
    assert grid.summary.startswith("For this prompt and seed: at 10 steps, the image settles from guidance 3; "
                                   "at 20 steps, the image settles from guidance 3.")  # fmt: skip
    assert png_parameters(grid.png) == "x"


def test_flux_dev_cells_make_a_distilled_cfg_scale_grid_as_forge_writes_it() -> None:
    request = CompareGuidanceRequest("a fox", guidances=(2.0, 3.5), steps=(20,), scheduler="Euler", width=SIDE,
                                     height=SIDE)  # fmt: skip
    text = infotext("a fox", "", steps=20, scheduler="Euler", guidance=2.0, seed=0, width=SIDE, height=SIDE,
                    model="flux-dev", distilled=True)  # fmt: skip
    grid = render_guidance_result(request, [cell(0, text=text), cell(9, text=text)], model="flux-dev")
    parameters = png_parameters(grid.png) or ""
    assert "CFG scale: 1, Distilled CFG Scale: 2," in parameters
    assert parameters.endswith('Script: X/Y/Z plot, X Type: Distilled CFG Scale, X Values: "2, 3.5"')
    assert "distilled guidance" in grid.summary

"""Grids and attachment fitting: pure Pillow, no Discord."""

from __future__ import annotations

import dataclasses
import io
import random
from datetime import date, timedelta

import pytest
from PIL import Image, ImageDraw
from PIL.PngImagePlugin import PngInfo

from bot.pictures.fonts import font_for, text_length
from bot.pictures.grids import LEGEND, render_grid
from bot.pictures.render import (
    CAPTION_BACKGROUND,
    CHART_COLOURS,
    CHART_SIZE,
    MARK,
    SECONDS_NOTE,
    default_caption,
    fit_attachment,
    footer_lines,
    grid_png,
    grid_shape,
    nice_ceiling,
    stacked_series,
    steps_label,
    usage_chart_png,
)
from inference.protocol import GeneratedImage
from inference.requests import CompareSchedulersRequest, CompareStepsRequest
from tests.a1111 import read_info_from_exif

COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200), (200, 30, 200)]


def solid(colour: tuple[int, int, int], width: int = 96, height: int = 64, steps: int = 30) -> GeneratedImage:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, "PNG")
    png = buffer.getvalue()
    return GeneratedImage(png=png, seed=7, steps=steps, width=width, height=height, seconds=2.44)


def noisy_png(width: int, height: int, seed: int = 0) -> bytes:
    rng = random.Random(seed)
    image = Image.frombytes("RGB", (width, height), rng.randbytes(width * height * 3))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def smooth_png(width: int, height: int) -> bytes:
    image = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=0)
    return buffer.getvalue()


def open_png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_default_caption_reads_like_the_guide() -> None:
    assert default_caption(solid((0, 0, 0), steps=30)) == "30 steps · 2.4s"


def test_six_cells_make_three_columns_and_two_rows() -> None:
    assert grid_shape(6) == (3, 2)


@pytest.mark.parametrize("cells", range(2, 13))
def test_grid_shape_holds_every_cell_without_an_empty_row(cells: int) -> None:
    columns, rows = grid_shape(cells)
    assert columns * rows >= cells
    assert columns * (rows - 1) < cells
    assert columns <= 4


def test_grid_keeps_every_cell_at_full_resolution_in_reading_order() -> None:
    steps = (5, 10, 20, 30, 40, 50)
    images = [solid(colour, steps=n) for colour, n in zip(COLOURS, steps, strict=True)]
    grid = open_png(grid_png(images))
    assert grid.format == "PNG"
    assert grid.width >= 3 * 96
    assert grid.height >= 2 * 64

    found = []
    for colour in COLOURS:
        box = _bounding_box_of(grid, colour)
        found.append(box)
        left, top, right, bottom = box
        assert (right - left, bottom - top) == (96, 64)
    lefts = sorted({box[0] for box in found})
    tops = sorted({box[1] for box in found})
    assert len(lefts) == 3
    assert len(tops) == 2
    expected_order = [(lefts[i % 3], tops[i // 3]) for i in range(6)]
    assert [(box[0], box[1]) for box in found] == expected_order


def test_each_cell_has_a_dark_caption_strip_with_light_text_under_it() -> None:
    grid = open_png(grid_png([solid(COLOURS[0]), solid(COLOURS[1])]))
    left, _, right, bottom = _bounding_box_of(grid, COLOURS[0])
    strip = grid.crop((left, bottom, right, bottom + 20))
    pixels = list(strip.getdata())
    assert pixels.count(CAPTION_BACKGROUND) > len(pixels) // 2
    assert any(min(pixel) > 180 for pixel in pixels), "no caption text drawn"


def test_custom_caption_is_called_for_each_image() -> None:
    images = [solid(colour) for colour in COLOURS[:3]]
    seen: list[GeneratedImage] = []

    def caption(image: GeneratedImage) -> str:
        seen.append(image)
        return "a caption far too long to fit under a ninety-six pixel cell, so it gets shortened"

    grid_png(images, caption=caption)
    assert seen == images


def test_an_empty_grid_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one"):
        grid_png([])


def test_a_png_that_fits_is_returned_unchanged() -> None:
    png = noisy_png(64, 64)
    assert fit_attachment(png, len(png)) == (png, "png")


def test_lossless_webp_is_tried_before_lossy_encodings() -> None:
    png = smooth_png(512, 512)
    data, extension = fit_attachment(png, len(png) - 1)
    assert extension == "webp"
    assert len(data) < len(png)
    assert open_png(data).tobytes() == open_png(png).convert("RGB").tobytes()


def test_noise_too_big_for_lossless_becomes_jpeg_at_full_size() -> None:
    png = noisy_png(256, 256)
    data, extension = fit_attachment(png, len(png) // 3)
    assert extension == "jpg"
    assert len(data) <= len(png) // 3
    assert open_png(data).size == (256, 256)


def test_a_tight_limit_downscales_instead_of_failing() -> None:
    png = noisy_png(512, 512)
    limit = 20_000
    data, extension = fit_attachment(png, limit)
    assert extension == "jpg"
    assert len(data) <= limit
    image = open_png(data)
    assert image.width < 512
    assert image.width / image.height == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize("limit", [5_000, 40_000, 150_000, 700_000])
def test_fit_attachment_never_exceeds_the_limit(limit: int) -> None:
    data, _ = fit_attachment(noisy_png(480, 320, seed=limit), limit)
    assert len(data) <= limit


def _bounding_box_of(image: Image.Image, colour: tuple[int, int, int]) -> tuple[int, int, int, int]:
    mask = Image.eval(image.convert("RGB"), lambda _: 0)  # same size, black
    pixels = image.load()
    assert pixels is not None
    mask_pixels = mask.load()
    assert mask_pixels is not None
    for y in range(image.height):
        for x in range(image.width):
            if pixels[x, y] == colour:
                mask_pixels[x, y] = (255, 255, 255)
    box = mask.getbbox()
    assert box is not None, f"{colour} not in grid"
    return box


def test_a_footer_adds_one_strip_under_the_grid() -> None:
    images = [solid(COLOURS[0], steps=5), solid(COLOURS[1], steps=10)]
    plain = open_png(grid_png(images))
    footed = open_png(grid_png(images, footer="a lighthouse · Euler a · seed 42"))
    assert footed.width == plain.width
    assert footed.height > plain.height
    bottom = footed.convert("L").crop((0, plain.height, footed.width, footed.height))
    assert max(bottom.getdata()) > 200, "the footer text is drawn"


# --- the /usage-server chart ----------------------------------------------------------------


def test_the_usage_chart_is_a_png_of_the_promised_size_with_one_colour_per_scheduler() -> None:
    days = [date(2026, 3, 1) + timedelta(days=offset) for offset in range(30)]
    series = {"Euler a": [5] * 30, "DDIM": [0] * 29 + [20]}
    image = Image.open(io.BytesIO(usage_chart_png(days, series, title="Images per day")))
    assert image.format == "PNG" and image.size == CHART_SIZE
    colours = {colour for _, colour in image.convert("RGB").getcolors(maxcolors=1 << 16) or []}
    assert {CHART_COLOURS[0], CHART_COLOURS[1]} <= colours  # Euler a (more images) first, then DDIM
    # The last day's bar is the tallest: DDIM's 20 on Euler a's 5.
    last_bar = image.convert("RGB").crop(
        (CHART_SIZE[0] - 60, 90, CHART_SIZE[0] - 30, CHART_SIZE[1])
    )  # under the legend
    assert CHART_COLOURS[1] in {colour for _, colour in last_bar.getcolors(maxcolors=1 << 16) or []}


def test_an_empty_usage_chart_is_still_a_chart_of_the_promised_size() -> None:
    days = [date(2026, 3, 1) + timedelta(days=offset) for offset in range(30)]
    image = Image.open(io.BytesIO(usage_chart_png(days, {}, title="Images per day")))
    assert image.size == CHART_SIZE


def test_beyond_the_palette_the_least_used_schedulers_are_summed_as_other() -> None:
    series = {name: [index, index] for index, name in enumerate("ABCDEFGHIJ", start=1)}
    stacked = stacked_series(series)
    assert len(stacked) == len(CHART_COLOURS) and list(stacked)[:2] == ["J", "I"]
    assert stacked["other"] == [1 + 2 + 3, 1 + 2 + 3]  # A, B and C
    assert sum(map(sum, stacked.values())) == sum(map(sum, series.values()))


@pytest.mark.parametrize(("top", "axis"), [(0, 1), (1, 1), (3, 5), (7, 10), (66, 100), (120, 200), (2400, 2500)])
def test_the_axis_ends_at_a_round_number_above_the_tallest_bar(top: int, axis: float) -> None:
    assert nice_ceiling(top) == axis


# --- parameters travel with the image ---------------------------------------------------------------

PARAMETERS = "café 狐 🦊\nSteps: 5, Sampler: Euler, CFG scale: 7, Seed: 42, Size: 96x64, Model: tiny, X Type: Steps"


def test_a_grid_carries_its_parameters_in_the_png_chunk() -> None:
    grid = grid_png([solid(c) for c in COLOURS[:3]], parameters=PARAMETERS)
    assert Image.open(io.BytesIO(grid)).info["parameters"] == PARAMETERS
    assert "parameters" not in Image.open(io.BytesIO(grid_png([solid(COLOURS[0])]))).info


@pytest.mark.parametrize("extension", ["png", "webp", "jpg"])
def test_re_encoded_attachments_keep_the_parameters_where_a1111_reads_them(extension: str) -> None:
    png = noisy_png(256, 256) if extension != "webp" else smooth_png(512, 512)
    info = PngInfo()
    info.add_text("parameters", PARAMETERS)
    buffer = io.BytesIO()
    Image.open(io.BytesIO(png)).save(buffer, "PNG", pnginfo=info)
    limit = {"png": 10**7, "webp": len(buffer.getvalue()) - 1, "jpg": 60_000}[extension]
    data, got = fit_attachment(buffer.getvalue(), limit)
    assert got == extension and len(data) <= limit
    image = Image.open(io.BytesIO(data))
    if got == "png":
        assert image.info["parameters"] == PARAMETERS
    else:  # EXIF UserComment, as A1111 writes JPEG and WebP, read back as A1111 reads it (through piexif)
        assert read_info_from_exif(image.info["exif"]) == PARAMETERS


def test_captions_and_footers_draw_every_script() -> None:
    """The grid's text goes through the font chain: the footer in CJK and emoji is not blank or boxes."""
    image = open_png(grid_png([solid(COLOURS[0], 256, 128)], caption=lambda _: "狐 🦊", footer="café crème 狐 🦊"))
    footer = image.crop((0, image.height - 20, image.width, image.height))
    assert any(p[0] > 150 and p[2] < 100 for p in footer.convert("RGB").getdata()), "the orange fox emoji"


# --- captions, scheduler grids, the change marks ------------------------------------------------


def test_one_step_reads_as_one_step_and_a_fraction_of_a_second_keeps_two_places() -> None:
    image = dataclasses.replace(solid((0, 0, 0), steps=1), seconds=0.046)
    assert default_caption(image) == "1 step · 0.05s"
    assert steps_label(2) == "2 steps"


def test_a_scheduler_grid_has_its_columns_and_room_for_the_row_and_column_labels() -> None:
    cells = [solid(COLOURS[i % 6], width=96, height=64) for i in range(6)]
    plain = open_png(grid_png(cells, columns=3))
    labelled = open_png(
        grid_png(cells, columns=3, row_labels=["Euler a", "DPM++ 2M Karras"], column_labels=["2 steps", "4", "8"])
    )
    assert plain.size[0] < labelled.size[0] and plain.size[1] < labelled.size[1]
    # Three columns and two rows, whatever grid_shape would choose for six cells.
    assert open_png(grid_png(cells[:4], columns=4)).width > open_png(grid_png(cells[:4])).width


def test_a_marked_cell_gets_a_frame_and_the_others_do_not() -> None:
    cells = [solid((20, 20, 20), width=96, height=64) for _ in range(2)]
    image = open_png(grid_png(cells, columns=2, marked={1})).convert("RGB")
    gap = 4
    assert image.getpixel((gap + 96 + gap + 1, gap + 20)) == MARK  # the left edge of the second cell
    assert image.getpixel((gap + 1, gap + 20)) != MARK


def test_the_change_mark_renders_as_a_letter_not_the_missing_glyph_box() -> None:
    assert font_for("Δ").has("Δ"), "an installed font has the Δ of the change marks"


def test_a_grid_with_its_changes_marks_where_each_row_settles_and_says_it() -> None:
    def shifted(shift: int, steps: int) -> GeneratedImage:
        image = Image.new("RGB", (96, 96), (40, 90, 160))
        ImageDraw.Draw(image).rectangle((10 + shift, 20, 50 + shift, 60), fill=(220, 40, 30))
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        return GeneratedImage(buffer.getvalue(), 1, steps, 96, 96, seconds=0.01 * steps)

    request = CompareSchedulersRequest("a fox", schedulers=("DDIM", "Euler a"), steps=(2, 4, 8), width=256, height=256)
    images = [shifted(0, 2), shifted(20, 4), shifted(20, 8), shifted(0, 2), shifted(20, 4), shifted(40, 8)]
    grid = render_grid(request, images, facts="tiny · seed 1")
    assert grid.summary.startswith("For this prompt and seed: DDIM settles at 4 steps; Euler a keeps changing")
    image = open_png(grid.png).convert("RGB")
    assert MARK in {colour for _, colour in image.getcolors(maxcolors=image.width * image.height) or []}


# --- the footer: the facts always show, the words wrap -------------------------------------------------------

FISHERMAN = "portrait of an old fisherman, dramatic lighting, highly detailed, 85mm, bokeh, golden hour"
FACTS = "tiny-flux · Euler · seed 5"


@pytest.mark.parametrize("width", [2000, 800, 500, 200])
def test_the_footer_shortens_the_prompt_never_the_model_scheduler_and_seed(width: int) -> None:
    lines = footer_lines((FISHERMAN, FACTS), None, 18, width)
    assert all(text_length(line, 18) <= width for line in lines)
    shown = " ".join(lines)
    assert all(fact in shown for fact in ("tiny-flux", "Euler", "seed 5")), lines
    assert lines[0].startswith("portrait of an old"), "the prompt comes first"


def test_a_prompt_with_line_breaks_is_one_footer_line() -> None:
    assert footer_lines(("a fox\nin the\tsnow", FACTS), None, 18, 2000) == [f"a fox in the snow · {FACTS}"]


def test_footer_lines_wrap_between_words_instead_of_being_cut() -> None:
    lines = footer_lines(None, f"{SECONDS_NOTE}\n{LEGEND}", 18, 300)
    assert len(lines) > 2 and not any("…" in line for line in lines)
    assert " ".join(lines) == f"{SECONDS_NOTE} {LEGEND}"
    assert all(text_length(line, 18) <= 300 for line in lines)


def test_a_two_cell_grid_wraps_the_legend_onto_more_footer_lines() -> None:
    """Two 256 px cells are narrower than the legend: the footer grows a line instead of cutting it."""
    request = CompareStepsRequest("a fox", steps=(2, 4), width=256, height=256)
    images = [solid(COLOURS[0], 256, 256, steps) for steps in (2, 4)]
    grid = open_png(render_grid(request, images).png)
    two_lines = open_png(grid_png(images, footer="one\ntwo"))  # the seconds note and the legend, uncut
    assert grid.width == two_lines.width and grid.height > two_lines.height

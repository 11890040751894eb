"""Turn generated images into things Discord can show: labelled grids that fit the upload limit.

Pillow only (no discord import), so the offline CLI can use the same grid as the bot.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import date

from PIL import Image, ImageDraw, ImageFont

from bot.pictures.fonts import draw_text, fit_text, font_for, one_line, text_length, wrap_text
from inference.imaging import encode_png
from inference.parameters import PNG_KEY, exif_parameters
from inference.protocol import GeneratedImage

log = logging.getLogger(__name__)

BACKGROUND = (17, 18, 20)
CAPTION_BACKGROUND = (32, 34, 37)
CAPTION_TEXT = (236, 237, 239)
MARK = (87, 242, 135)  # the settled cell's frame
SECONDS_NOTE = "seconds = this cell's share of the batched compute time"

# Columns per cell count: the guide's 3 x 2 for six cells, never more than four across so that
# cells stay large in Discord's preview.
_COLUMNS = {1: 1, 2: 2, 3: 3, 4: 2, 5: 3, 6: 3, 7: 4, 8: 4, 9: 3, 10: 4, 11: 4, 12: 4}


def default_caption(image: GeneratedImage) -> str:
    """The guide's label: "30 steps · 2.4s", "1 step · 0.05s"."""
    return f"{steps_label(image.steps)} · {format_seconds(image.seconds)}"


def steps_label(steps: int) -> str:
    """ "1 step", "30 steps"."""
    return f"{steps} step{'' if steps == 1 else 's'}"


def format_seconds(seconds: float) -> str:
    """Two significant places under a second (a cell's share of a batch is often a fraction), else one decimal."""
    return f"{seconds:.2f}s" if seconds < 0.995 else f"{seconds:.1f}s"


def grid_shape(cells: int) -> tuple[int, int]:
    """(columns, rows) of a grid of `cells` images."""
    if cells < 1:
        raise ValueError(f"a grid needs at least one image; got {cells}")
    columns = _COLUMNS.get(cells, 4)
    return columns, math.ceil(cells / columns)


def cell_metrics(cell_width: int) -> tuple[int, int, int]:
    """(caption strip height, gap, font size) of a grid whose cells are `cell_width` pixels wide."""
    strip = max(28, round(cell_width * 0.075))
    return strip, max(4, cell_width // 128), max(12, round(strip * 0.58))


def caption_fits(text: str, cell_width: int) -> bool:
    """Whether `text` fits a caption strip of a cell `cell_width` pixels wide without being shortened."""
    _, gap, font_size = cell_metrics(cell_width)
    return text_length(one_line(text), font_size) <= cell_width - 2 * gap


def grid_png(
    images: Sequence[GeneratedImage],
    *,
    caption: Callable[[GeneratedImage], str] | None = None,
    footer: str | None = None,
    title: tuple[str, str] | None = None,
    parameters: str | None = None,
    columns: int | None = None,
    row_labels: Sequence[str] = (),
    column_labels: Sequence[str] = (),
    marked: Collection[int] = (),
) -> bytes:
    """Compose the images, at full resolution, into one grid with a caption strip under each cell,
    and optional footer lines across the bottom: a `title` (prompt, facts) such as ("a fox", "sd15 · Euler
    a · seed 42"), its prompt shortened so the facts always show, then the `footer`'s lines (what the
    numbers are), each wrapped to the grid's width.

    `columns` fixes the layout (a scheduler × steps grid); `row_labels` and `column_labels` name
    the rows on the left and the columns on top; the cells at the `marked` indices get a frame.
    `parameters` (the grid's A1111 infotext) goes into the PNG's `parameters` chunk.
    """
    if not images:
        raise ValueError("a grid needs at least one image")
    label = caption or default_caption
    cells = [Image.open(io.BytesIO(image.png)).convert("RGB") for image in images]
    cell_width = max(cell.width for cell in cells)
    cell_height = max(cell.height for cell in cells)
    strip, gap, font_size = cell_metrics(cell_width)
    if columns is None:
        columns, rows = grid_shape(len(cells))
    else:
        rows = math.ceil(len(cells) / columns)
    label_width = math.ceil(max((text_length(text, font_size) for text in row_labels), default=0))
    margin_left = label_width + 4 * gap if row_labels else 0
    margin_top = strip + gap if column_labels else 0

    slot_height = cell_height + strip
    width = margin_left + columns * cell_width + (columns + 1) * gap
    grid_height = margin_top + rows * slot_height + (rows + 1) * gap
    below = footer_lines(title, footer, font_size, width - 4 * gap)
    footer_height = len(below) * strip + (gap if below else 0)
    canvas = Image.new("RGB", (width, grid_height + footer_height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    _draw_axis_labels(canvas, font_size, row_labels, column_labels, (margin_left, margin_top, gap),
                      (cell_width, cell_height, strip))  # fmt: skip
    for index, (cell, image) in enumerate(zip(cells, images, strict=True)):
        column, row = index % columns, index // columns
        left = margin_left + gap + column * (cell_width + gap)
        top = margin_top + gap + row * (slot_height + gap)
        # Smaller cells sit centred in their slot; compare grids have equal sizes anyway.
        canvas.paste(cell, (left + (cell_width - cell.width) // 2, top + (cell_height - cell.height) // 2))
        strip_top = top + cell_height
        strip_box = (left, strip_top, left + cell_width - 1, strip_top + strip - 1)
        draw.rectangle(strip_box, fill=CAPTION_BACKGROUND)
        caption_text = fit_text(label(image), font_size, cell_width - 2 * gap)
        draw_text(canvas, (left + cell_width / 2, strip_top + strip / 2), caption_text, font_size, CAPTION_TEXT,
                  anchor="mm")  # fmt: skip
        if index in marked:
            _draw_mark(draw, (left, top, left + cell_width - 1, top + slot_height - 1), gap)
    for line_number, line in enumerate(below):
        draw_text(canvas, (2 * gap, grid_height + (line_number + 0.5) * strip), line, font_size, CAPTION_TEXT)
    return encode_png(canvas, parameters=parameters)


def footer_lines(title: tuple[str, str] | None, footer: str | None, size: int, width: float) -> list[str]:
    """The footer as drawn: "prompt · facts" with the prompt shortened to leave the facts room (the prompt on a
    line of its own when the grid is too narrow for both), then each footer line wrapped between words."""
    lines = []
    if title is not None:
        prompt, facts = one_line(title[0]), one_line(title[1])
        room = width - text_length(f" · {facts}", size)
        if room >= min(text_length(prompt, size), width / 3):
            lines.append(f"{fit_text(prompt, size, room)} · {facts}")
        else:
            lines += [fit_text(prompt, size, width), *wrap_text(facts, size, width)]
    for line in footer.splitlines() if footer else ():
        lines += wrap_text(line, size, width)
    return lines


def _draw_axis_labels(
    canvas: Image.Image,
    font_size: int,
    row_labels: Sequence[str],
    column_labels: Sequence[str],
    margins: tuple[int, int, int],
    cell: tuple[int, int, int],
) -> None:
    """Row names left of each row (vertically centred on its image), column names over each column."""
    margin_left, margin_top, gap = margins
    cell_width, cell_height, strip = cell
    for row, text in enumerate(row_labels):
        middle = margin_top + gap + row * (cell_height + strip + gap) + cell_height / 2
        fitted = fit_text(text, font_size, margin_left - gap)
        right_aligned = margin_left - gap - text_length(fitted, font_size)
        draw_text(canvas, (right_aligned, middle), fitted, font_size, CAPTION_TEXT)
    for column, text in enumerate(column_labels):
        centre = margin_left + gap + column * (cell_width + gap) + cell_width / 2
        fitted = fit_text(text, font_size, cell_width - 2 * gap)
        draw_text(canvas, (centre, gap + strip / 2), fitted, font_size, CAPTION_TEXT, anchor="mm")


def _draw_mark(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], gap: int) -> None:
    """A frame around a cell (image and caption): where its row settles."""
    draw.rectangle(box, outline=MARK, width=max(3, gap // 2 + 2))


# --- the /usage-server chart ----------------------------------------------------------------

CHART_SIZE = (1200, 600)
CHART_GRID = (58, 61, 66)
CHART_MUTED = (160, 164, 171)
# Distinct on a dark background, the most used scheduler first; the rest share the last colour.
CHART_COLOURS = ((88, 101, 242), (87, 242, 135), (254, 231, 92), (235, 69, 158), (69, 210, 235), (250, 166, 26),
                 (237, 66, 69), (150, 150, 160))  # fmt: skip


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 × 10^k at or above `value` (an axis' top); 1 for nothing."""
    if value <= 0:
        return 1
    power = 10 ** math.floor(math.log10(value))
    return next(step * power for step in (1, 2, 2.5, 5, 10) if step * power >= value)


def stacked_series(series: Mapping[str, Sequence[int]], keep: int = len(CHART_COLOURS)) -> dict[str, list[int]]:
    """The series by total, largest first; beyond `keep`, the smallest are summed as "other"."""
    ranked = sorted(series.items(), key=lambda item: (-sum(item[1]), item[0]))
    if len(ranked) <= keep:
        return {name: list(values) for name, values in ranked}
    shown = {name: list(values) for name, values in ranked[: keep - 1]}
    shown["other"] = [sum(column) for column in zip(*(values for _, values in ranked[keep - 1 :]), strict=True)]
    return shown


def _latin_font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """The font for the Latin text and digits the bot writes itself (a chart's title, axes, legend)."""
    return font_for("0").at(size)


def usage_chart_png(days: Sequence[date], series: Mapping[str, Sequence[int]], *, title: str) -> bytes:
    """Stacked bars, one per day, one colour per scheduler (a legend names them), CHART_SIZE pixels."""
    width, height = CHART_SIZE
    canvas = Image.new("RGB", CHART_SIZE, BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    title_font, font = _latin_font(26), _latin_font(16)
    left, top, right, bottom = 70, 90, width - 30, height - 50
    draw.text((left, 24), title, font=title_font, fill=CAPTION_TEXT)

    stacks = stacked_series(series)
    totals = [sum(values[day] for values in stacks.values()) for day in range(len(days))]
    ceiling = nice_ceiling(max(totals, default=0))
    for tick in range(5):
        value = ceiling * tick / 4
        if not value.is_integer():  # images come whole
            continue
        y = bottom - (bottom - top) * tick / 4
        draw.line((left, y, right, y), fill=CHART_GRID, width=1)
        draw.text((left - 10, y), f"{value:g}", font=font, fill=CHART_MUTED, anchor="rm")

    slot = (right - left) / max(1, len(days))
    bar = max(2.0, slot * 0.72)
    for index, day in enumerate(days):
        x = left + slot * index + (slot - bar) / 2
        y = float(bottom)
        for colour, values in zip(CHART_COLOURS, stacks.values(), strict=False):
            if values[index]:
                segment = (bottom - top) * values[index] / ceiling
                draw.rectangle((x, y - segment, x + bar, y), fill=colour)
                y -= segment
        if index % 5 == 0 or index == len(days) - 1:
            draw.text((x + bar / 2, bottom + 8), f"{day:%b} {day.day}", font=font, fill=CHART_MUTED, anchor="mt")

    if not stacks:
        draw.text(((left + right) / 2, (top + bottom) / 2), "no images yet", font=title_font, fill=CHART_MUTED,
                  anchor="mm")  # fmt: skip
    legend_x = float(right)
    for colour, name in reversed(list(zip(CHART_COLOURS, stacks, strict=False))):
        label_width = draw.textlength(name, font=font)
        legend_x -= label_width + 34
        draw.rectangle((legend_x, 62, legend_x + 14, 76), fill=colour)
        draw.text((legend_x + 20, 69), name, font=font, fill=CAPTION_TEXT, anchor="lm")
    return _encode(canvas, "PNG")


# --- fitting Discord's upload limit ----------------------------------------------------------

_LOSSY_QUALITIES = (95, 90, 85, 80, 70, 60)
_MIN_SIDE = 64


def png_parameters(png: bytes) -> str | None:
    """The A1111 `parameters` text a PNG carries, or None."""
    with Image.open(io.BytesIO(png)) as image:
        parameters = image.info.get(PNG_KEY)
    return parameters if isinstance(parameters, str) else None


def fit_attachment(png: bytes, limit: int) -> tuple[bytes, str]:
    """Return (bytes, extension without dot) no larger than `limit`.

    PNG as is when it fits; else lossless WebP; else JPEG at decreasing quality; else the image
    downscaled until a good-quality JPEG fits. Raises ValueError only if even a tiny image won't.
    """
    if limit <= 0:
        raise ValueError(f"the attachment limit must be positive; got {limit}")
    if len(png) <= limit:
        return png, "png"
    image = Image.open(io.BytesIO(png))
    image.load()
    rgb = image.convert("RGB")
    # A1111 keeps a JPEG's or WebP's parameters in the EXIF UserComment; so do we.
    parameters = image.info.get(PNG_KEY)
    exif = exif_parameters(parameters) if isinstance(parameters, str) else b""

    webp = _encode(image, "WEBP", lossless=True, method=4, exif=exif)
    if len(webp) <= limit:
        log.info("attachment re-encoded as lossless WebP: %d -> %d bytes", len(png), len(webp))
        return webp, "webp"
    for quality in _LOSSY_QUALITIES:
        jpeg = _encode(rgb, "JPEG", quality=quality, optimize=True, exif=exif)
        if len(jpeg) <= limit:
            log.info("attachment re-encoded as JPEG q%d: %d -> %d bytes", quality, len(png), len(jpeg))
            return jpeg, "jpg"
    # Estimate the scale from the size at the last quality (bytes grow with pixel count), then
    # shrink further until it fits.
    scale = min(0.9, math.sqrt(limit / len(jpeg)) * 0.95)
    while True:
        size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
        smaller = _encode(rgb.resize(size, Image.Resampling.LANCZOS), "JPEG", quality=85, optimize=True, exif=exif)
        if len(smaller) <= limit:
            log.info("attachment downscaled to %dx%d: %d -> %d bytes", *size, len(png), len(smaller))
            return smaller, "jpg"
        if min(size) <= _MIN_SIDE:
            raise ValueError(f"cannot fit an image into {limit} bytes")
        scale *= 0.8


def _encode(image: Image.Image, format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


WITHHELD_BACKGROUND = (64, 66, 71)


def withheld_tile(width: int, height: int, reason: str) -> bytes:
    """A neutral grey picture of the given size with the reason it stands in for one that was withheld."""
    tile = Image.new("RGB", (width, height), WITHHELD_BACKGROUND)
    draw = ImageDraw.Draw(tile)
    size = max(10, min(24, width // 16))
    font = _latin_font(size)
    y = height / 2 - size * 1.5
    for line in ("Withheld", reason):
        text = fit_text(line, size, width - 16)
        draw.text(((width - text_length(text, size)) / 2, y), text, font=font, fill=CAPTION_TEXT)
        y += size * 1.6
    return encode_png(tile)

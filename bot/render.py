"""Turn generated images into things Discord can show: labelled grids that fit the upload limit.

Pillow only (no discord import), so the offline CLI can use the same grid as the bot.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Callable, Collection, Sequence
from functools import cache

from PIL import Image, ImageDraw, ImageFont

from inference.protocol import GeneratedImage

log = logging.getLogger(__name__)

BACKGROUND = (17, 18, 20)
CAPTION_BACKGROUND = (32, 34, 37)
CAPTION_TEXT = (236, 237, 239)
MARK = (87, 242, 135)  # the settled cell's frame
SECONDS_NOTE = "seconds = this cell's share of the batched GPU time"

# Columns per cell count: the guide's 3 x 2 for six cells, never more than four across so that
# cells stay large in Discord's preview.
_COLUMNS = {1: 1, 2: 2, 3: 3, 4: 2, 5: 3, 6: 3, 7: 4, 8: 4, 9: 3, 10: 4, 11: 4, 12: 4}

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont
LABEL_FONT = "DejaVuSans.ttf"


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


@cache
def _font(size: int) -> Font:
    try:  # Debian's fonts-dejavu-core: it has the "Δ" of the change marks, which Pillow's own font lacks
        return ImageFont.truetype(LABEL_FONT, size)
    except OSError:
        log.warning("%s is not installed; grid labels use Pillow's font (no Δ)", LABEL_FONT)
    try:
        return ImageFont.load_default(size=size)
    except ImportError:  # Pillow built without FreeType: a small bitmap font still reads
        log.warning("Pillow has no FreeType; grid captions use the small bitmap font")
        return ImageFont.load_default()


def grid_png(
    images: Sequence[GeneratedImage],
    *,
    caption: Callable[[GeneratedImage], str] | None = None,
    footer: str | None = None,
    columns: int | None = None,
    row_labels: Sequence[str] = (),
    column_labels: Sequence[str] = (),
    marked: Collection[int] = (),
) -> bytes:
    """Compose the images, at full resolution, into one grid with a caption strip under each cell,
    and optional footer lines across the bottom (the prompt, scheduler and seed; what the numbers are).

    `columns` fixes the layout (a scheduler × steps grid); `row_labels` and `column_labels` name
    the rows on the left and the columns on top; the cells at the `marked` indices get a frame.
    """
    if not images:
        raise ValueError("a grid needs at least one image")
    label = caption or default_caption
    cells = [Image.open(io.BytesIO(image.png)).convert("RGB") for image in images]
    cell_width = max(cell.width for cell in cells)
    cell_height = max(cell.height for cell in cells)
    strip = max(28, round(cell_width * 0.075))
    gap = max(4, cell_width // 128)
    font = _font(max(12, round(strip * 0.58)))
    if columns is None:
        columns, rows = grid_shape(len(cells))
    else:
        rows = math.ceil(len(cells) / columns)
    margin_left = _row_label_width(row_labels, font) + 4 * gap if row_labels else 0
    margin_top = strip + gap if column_labels else 0

    slot_height = cell_height + strip
    width = margin_left + columns * cell_width + (columns + 1) * gap
    grid_height = margin_top + rows * slot_height + (rows + 1) * gap
    footer_lines = footer.splitlines() if footer else []
    footer_height = len(footer_lines) * strip + (gap if footer_lines else 0)
    canvas = Image.new("RGB", (width, grid_height + footer_height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    _draw_axis_labels(draw, font, row_labels, column_labels, (margin_left, margin_top, gap),
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
        draw.text(
            (left + cell_width / 2, strip_top + strip / 2),
            _fit_text(draw, label(image), font, cell_width - 2 * gap),
            font=font,
            fill=CAPTION_TEXT,
            anchor="mm",
        )
        if index in marked:
            _draw_mark(draw, (left, top, left + cell_width - 1, top + slot_height - 1), gap)
    for line_number, line in enumerate(footer_lines):
        draw.text((2 * gap, grid_height + (line_number + 0.5) * strip), _fit_text(draw, line, font, width - 4 * gap),
                  font=font, fill=CAPTION_TEXT, anchor="lm")  # fmt: skip
    return _encode(canvas, "PNG")


def _row_label_width(labels: Sequence[str], font: Font) -> int:
    """Room on the left for the longest row label (a scheduler's name)."""
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    return math.ceil(max(measure.textlength(text, font=font) for text in labels))


def _draw_axis_labels(
    draw: ImageDraw.ImageDraw,
    font: Font,
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
        fitted = _fit_text(draw, text, font, margin_left - gap)
        draw.text((margin_left - gap, middle), fitted, font=font, fill=CAPTION_TEXT, anchor="rm")
    for column, text in enumerate(column_labels):
        centre = margin_left + gap + column * (cell_width + gap) + cell_width / 2
        fitted = _fit_text(draw, text, font, cell_width - 2 * gap)
        draw.text((centre, gap + strip / 2), fitted, font=font, fill=CAPTION_TEXT, anchor="mm")


def _draw_mark(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], gap: int) -> None:
    """A frame around a cell (image and caption): where its row settles."""
    draw.rectangle(box, outline=MARK, width=max(3, gap // 2 + 2))


def _fit_text(draw: ImageDraw.ImageDraw, text: str, font: Font, width: int) -> str:
    """Shorten a caption with an ellipsis until it fits the cell's width."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


# --- fitting Discord's upload limit ----------------------------------------------------------

_LOSSY_QUALITIES = (95, 90, 85, 80, 70, 60)
_MIN_SIDE = 64


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

    webp = _encode(image, "WEBP", lossless=True, method=4)
    if len(webp) <= limit:
        log.info("attachment re-encoded as lossless WebP: %d -> %d bytes", len(png), len(webp))
        return webp, "webp"
    for quality in _LOSSY_QUALITIES:
        jpeg = _encode(rgb, "JPEG", quality=quality, optimize=True)
        if len(jpeg) <= limit:
            log.info("attachment re-encoded as JPEG q%d: %d -> %d bytes", quality, len(png), len(jpeg))
            return jpeg, "jpg"
    # Estimate the scale from the size at the last quality (bytes grow with pixel count), then
    # shrink further until it fits.
    scale = min(0.9, math.sqrt(limit / len(jpeg)) * 0.95)
    while True:
        size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
        smaller = _encode(rgb.resize(size, Image.Resampling.LANCZOS), "JPEG", quality=85, optimize=True)
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

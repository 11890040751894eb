"""Text on images in the prompt's own script: a chain of installed fonts, one picked per character run.

Pillow draws a string with one font and has no fallback, so "café crème 狐 🦊" in one font shows
boxes. Here each character goes to the first font in `FONT_CHAIN` whose character map has it (read
with fontTools), and runs of the same font are drawn together. Colour emoji come from Noto Color
Emoji, a bitmap font with a single size (109 px): its runs are drawn at that size and scaled.

The fonts are Debian packages (fonts-noto-core, fonts-noto-cjk, fonts-noto-color-emoji,
fonts-dejavu-core), found by file name under the system font folders; nothing is fetched at run
time. Without any of them, text falls back to Pillow's default font, with one warning.
"""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from fontTools.ttLib import TTFont
from PIL import Image, ImageDraw, ImageFont

log = logging.getLogger(__name__)

FONT_DIRS = (Path("/usr/share/fonts"), Path("/usr/local/share/fonts"))
# File names in the order they are tried: Latin, Greek and Cyrillic first, then symbols DejaVu has,
# Chinese/Japanese/Korean, colour emoji, then every other Noto Sans script (Arabic, Devanagari, …).
FONT_CHAIN = (
    "NotoSans-Regular.ttf",
    "DejaVuSans.ttf",
    "NotoSansCJK-Regular.ttc",
    "NotoColorEmoji.ttf",
    "NotoSansSymbols-Regular.ttf",
    "NotoSansSymbols2-Regular.ttf",
    "NotoSansMath-Regular.ttf",
)
OTHER_SCRIPTS = "NotoSans*-Regular.ttf"
EMOJI_BITMAP_SIZE = 109  # the one size Noto Color Emoji's bitmaps come in
# Characters that belong to the glyph before them (accents, variation selectors, joiners, skin tones).
_JOINERS = {"\u200d", "\ufe0e", "\ufe0f"}

PILLOW_DEFAULT = Path("<Pillow default>")


@dataclass(frozen=True, eq=False)
class FontFile:
    """One installed font file and the characters it has."""

    path: Path

    @property
    def codepoints(self) -> frozenset[int]:
        return _codepoints(self.path)

    @property
    def is_colour(self) -> bool:
        return "Color" in self.path.name

    def has(self, character: str) -> bool:
        return ord(character) in self.codepoints

    def at(self, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
        return _load(self.path, EMOJI_BITMAP_SIZE if self.is_colour else size)


@cache
def _codepoints(path: Path) -> frozenset[int]:
    """The characters a font file has (its character map), read once per process."""
    if path == PILLOW_DEFAULT:
        return frozenset(range(0x20, 0x7F))
    font = TTFont(path, fontNumber=0, lazy=True)
    try:
        return frozenset(font.getBestCmap() or {})
    finally:
        font.close()


@cache
def _load(path: Path, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    if path == PILLOW_DEFAULT:
        try:
            return ImageFont.load_default(size=size)
        except ImportError:  # Pillow built without FreeType: a small bitmap font still reads
            return ImageFont.load_default()
    return ImageFont.truetype(str(path), size, index=0)


@cache
def font_chain() -> tuple[FontFile, ...]:
    """The installed fonts in the order they are tried; Pillow's default when none is installed."""
    found: dict[str, Path] = {}
    for folder in FONT_DIRS:
        if folder.is_dir():
            for path in sorted(folder.rglob("*.tt[fc]")):
                found.setdefault(path.name, path)
    chain = [found[name] for name in FONT_CHAIN if name in found]
    chain += [path for name, path in sorted(found.items()) if Path(name).match(OTHER_SCRIPTS) and path not in chain]
    if not chain:
        log.warning(
            "no fonts found under %s: text on images uses Pillow's default font (Latin only); "
            "install fonts-noto-core fonts-noto-cjk fonts-noto-color-emoji",
            ", ".join(map(str, FONT_DIRS)),
        )
        return (FontFile(PILLOW_DEFAULT),)
    return tuple(FontFile(path) for path in chain)


def font_for(character: str) -> FontFile:
    """The first font in the chain that has `character` (the first font when none has it)."""
    chain = font_chain()
    return next((font for font in chain if font.has(character)), chain[0])


def runs(text: str) -> Iterator[tuple[FontFile, str]]:
    """Split `text` into (font, run) pieces; marks and joiners stay with the character before them."""
    current: FontFile | None = None
    run = ""
    for index, character in enumerate(text):
        font = _font_at(text, index, current)
        if font is not current and run:
            assert current is not None
            yield current, run
            run = ""
        current = font
        run += character
    if run and current is not None:
        yield current, run


def _font_at(text: str, index: int, current: FontFile | None) -> FontFile:
    """The font that draws `text[index]`, given the font of the run before it."""
    character = text[index]
    if text[index + 1 : index + 2] == "\ufe0f":  # emoji presentation asked for: the emoji font if it has it
        emoji = next((font for font in font_chain() if font.is_colour and font.has(character)), None)
        if emoji is not None:
            return emoji
    attached = character in _JOINERS or unicodedata.combining(character) or 0x1F3FB <= ord(character) <= 0x1F3FF
    # A space stays in the run it follows, except after emoji (the emoji font's space is too wide).
    keep = attached or (character == " " and current is not None and not current.is_colour)
    return current if current is not None and keep else font_for(character)


def _direction(run: str) -> str:
    """ "R" or "L" by the run's first strongly directional character; "N" (neutral) without one."""
    for character in run:
        kind = unicodedata.bidirectional(character)
        if kind in ("R", "AL"):
            return "R"
        if kind == "L":
            return "L"
    return "N"


def visual_runs(text: str) -> list[tuple[FontFile, str]]:
    """`runs(text)` in the order they are drawn from left to right.

    Each run is shaped on its own (Pillow's raqm orders the characters inside it), so only the
    runs need ordering: a right-to-left prompt with an emoji or a CJK word in it would otherwise
    read in the wrong order. This is the Unicode bidi algorithm at the level of whole runs: the
    paragraph's direction from its first strong character, a neutral run (emoji, digits, spaces)
    taking its neighbours' direction when they agree and the paragraph's otherwise, and runs
    reversed from the highest level down to the lowest odd one (rule L2).
    """
    pieces = list(runs(text))
    directions = [_direction(run) for _, run in pieces]
    paragraph = next((direction for direction in directions if direction != "N"), "L")
    base = 1 if paragraph == "R" else 0
    if base == 0 and "R" not in directions:
        return pieces
    levels = []
    for index, direction in enumerate(directions):
        if direction == "N":
            before = next((d for d in reversed(directions[:index]) if d != "N"), paragraph)
            after = next((d for d in directions[index + 1 :] if d != "N"), paragraph)
            direction = before if before == after else paragraph
        levels.append(base if direction == paragraph else base + 1)
    order = list(range(len(pieces)))
    for level in range(max(levels), 0, -1):
        start = 0
        while start < len(order):
            if levels[order[start]] < level:
                start += 1
                continue
            end = start
            while end < len(order) and levels[order[end]] >= level:
                end += 1
            order[start:end] = reversed(order[start:end])
            start = end
    return [pieces[index] for index in order]


def _run_length(font: FontFile, run: str, size: int) -> float:
    length = ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(run, font=font.at(size), embedded_color=font.is_colour)
    return length * size / EMOJI_BITMAP_SIZE if font.is_colour else length


def one_line(text: str) -> str:
    """`text` with every run of whitespace (line breaks and tabs too) folded into one space: captions and
    footers are single lines, and Pillow refuses to measure text with a line break in it."""
    return " ".join(text.split())


def text_length(text: str, size: int) -> float:
    """The width of `text` (as one line) drawn at `size` pixels."""
    return sum(_run_length(font, run, size) for font, run in runs(one_line(text)))


def wrap_text(text: str, size: int, width: float) -> list[str]:
    """`text` (as one line) broken between words into lines that fit `width` pixels; a word too long for a
    line of its own is shortened with an ellipsis."""
    lines: list[str] = []
    for word in one_line(text).split(" "):
        joined = f"{lines[-1]} {word}" if lines else word
        if lines and text_length(joined, size) <= width:
            lines[-1] = joined
        else:
            lines.append(fit_text(word, size, width))
    return lines


def fit_text(text: str, size: int, width: float) -> str:
    """`text` (as one line), shortened with an ellipsis until it fits `width` pixels."""
    text = one_line(text)
    if text_length(text, size) <= width:
        return text
    # The longest start that fits with the ellipsis, found by halving: measuring is what costs, and a
    # 1,500-character prompt cut a character at a time took seconds for every frame of a film.
    fits, too_long = 0, len(text)
    while too_long - fits > 1:
        middle = (fits + too_long) // 2
        if text_length(text[:middle] + "…", size) <= width:
            fits = middle
        else:
            too_long = middle
    return text[:fits] + "…"


def draw_text(
    canvas: Image.Image,
    xy: tuple[float, float],
    text: str,
    size: int,
    fill: tuple[int, int, int],
    *,
    anchor: str = "lm",
) -> None:
    """Draw `text` with its left edge ("lm") or centre ("mm") at `xy`, vertically centred there."""
    if anchor not in ("lm", "mm"):
        raise ValueError(f"anchor must be 'lm' or 'mm'; got {anchor!r}")
    x, y = xy
    text = one_line(text)
    if anchor == "mm":
        x -= text_length(text, size) / 2
    draw = ImageDraw.Draw(canvas)
    for font, run in visual_runs(text):
        if font.is_colour:
            x += _paste_emoji(canvas, (x, y), font, run, size)
            continue
        draw.text((x, y), run, font=font.at(size), fill=fill, anchor="lm")
        x += _run_length(font, run, size)


def _paste_emoji(canvas: Image.Image, xy: tuple[float, float], font: FontFile, run: str, size: int) -> float:
    """Draw colour emoji at their bitmap size, scale them to `size` and paste them; returns the width."""
    bitmap_font = font.at(size)
    width = max(1, round(_run_length(font, run, EMOJI_BITMAP_SIZE)))
    height = round(EMOJI_BITMAP_SIZE * 1.25)
    glyphs = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    ImageDraw.Draw(glyphs).text((0, height / 2), run, font=bitmap_font, embedded_color=True, anchor="lm")
    scale = size / EMOJI_BITMAP_SIZE
    scaled = glyphs.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.LANCZOS)
    x, y = xy
    canvas.paste(scaled, (round(x), round(y - scaled.height / 2)), scaled)
    return width * scale

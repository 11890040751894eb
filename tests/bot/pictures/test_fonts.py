"""Text on images in the prompt's own script: every character of accented Latin, CJK and emoji is
drawn from a font that has it, never as the missing-glyph box."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image, ImageChops, ImageDraw, features

from bot.pictures import fonts
from bot.pictures.fonts import FontFile, draw_text, fit_text, font_chain, runs, text_length, visual_runs, wrap_text

SAMPLES = ["café crème", "狐", "🦊", "café crème 狐 🦊", "Ærøskøbing · Ŝtupo · Привет · 東京タワー · 👍🏽 ❤️"]
SIZE = 32


def notdef_mask(font: FontFile) -> bytes:
    """What the font draws for a character it doesn't have (its .notdef glyph)."""
    missing = next(chr(c) for c in range(0xE000, 0xF8FF) if not font.has(chr(c)))  # a private-use character
    return glyph_mask(font, missing)


def glyph_mask(font: FontFile, character: str) -> bytes:
    size = 4 * max(SIZE, fonts.EMOJI_BITMAP_SIZE) if font.is_colour else 4 * SIZE
    image = Image.new("RGB", (size, size), (0, 0, 0))
    ImageDraw.Draw(image).text((size // 4, size // 4), character, font=font.at(SIZE), fill=(255, 255, 255),
                               embedded_color=font.is_colour)  # fmt: skip
    return image.tobytes()


@pytest.fixture
def fresh_chain() -> Iterator[None]:
    font_chain.cache_clear()
    yield
    font_chain.cache_clear()


@pytest.mark.parametrize("text", SAMPLES)
def test_every_character_comes_from_a_font_that_has_it_and_is_not_the_missing_glyph_box(text: str) -> None:
    for font, run in runs(text):
        assert font.path != fonts.PILLOW_DEFAULT, "the project's fonts are installed (see .ci/run)"
        for character in run:
            if character in " \ufe0f" or 0x1F3FB <= ord(character) <= 0x1F3FF:
                continue  # spaces, and marks drawn with the character before them
            assert font.has(character), f"{character!r} drawn with {font.path.name}, which lacks it"
            assert glyph_mask(font, character) != notdef_mask(font), f"{character!r} drawn as the missing box"


def test_accents_cjk_and_emoji_each_get_their_own_font() -> None:
    chosen = {run.strip(): font.path.name for font, run in runs("café 狐 🦊")}
    assert chosen == {"café": "NotoSans-Regular.ttf", "狐": "NotoSansCJK-Regular.ttc", "🦊": "NotoColorEmoji.ttf"}


def test_emoji_are_drawn_in_colour_at_the_texts_size() -> None:
    canvas = Image.new("RGB", (200, 60), (0, 0, 0))
    draw_text(canvas, (10, 30), "🦊", SIZE, (255, 255, 255))
    box = canvas.getbbox()
    assert box is not None
    assert SIZE * 0.7 <= box[3] - box[1] <= SIZE * 1.3, "scaled from the 109 px bitmap to the text's size"
    orange = [p for p in canvas.getdata() if p[0] > 180 and 60 < p[1] < 170 and p[2] < 80]
    assert len(orange) > 20, "the fox is orange, not the white text colour"


def test_pillow_shapes_complex_scripts() -> None:
    # Pillow's raqm layout (with FriBidi: `apt-get install libfribidi0`) joins Arabic letters and
    # orders right-to-left text inside a run; without it Arabic is drawn as separate letters, reversed.
    assert features.check("raqm"), "Pillow's raqm layout is unavailable: apt-get install libfribidi0"


@pytest.mark.parametrize(
    ("text", "left_to_right"),
    [
        # "a cat 🦊 in the snow": read from the right, so its first word is drawn rightmost.
        ("قطة 🦊 في الثلج", ["في الثلج", " ", "🦊", "قطة "]),
        ("שלום 狐 עולם", ["עולם", "狐 ", "שלום "]),
        ("قطة cat 🦊", ["🦊", "cat ", "قطة "]),  # a Latin word keeps its own direction inside
        ("fox قطة 🦊 في", ["fox ", "في", " ", "🦊", "قطة "]),  # a right-to-left phrase in a Latin line
        ("a fox 🦊 in snow 狐", ["a fox ", "🦊", " in snow ", "狐"]),
    ],
)
def test_runs_are_drawn_in_reading_order_for_right_to_left_scripts(text: str, left_to_right: list[str]) -> None:
    assert [run for _, run in visual_runs(text)] == left_to_right


def test_a_right_to_left_prompt_is_drawn_with_its_first_word_on_the_right() -> None:
    canvas = Image.new("RGB", (300, 60), (0, 0, 0))
    draw_text(canvas, (10, 30), "قطة 🦊", SIZE, (255, 255, 255))
    pixels = list(canvas.getdata())
    columns = [index % canvas.width for index, p in enumerate(pixels) if p[0] > 180 and 60 < p[1] < 170 and p[2] < 80]
    white = [index % canvas.width for index, p in enumerate(pixels) if min(p) > 200]
    assert columns and white
    # (The fox has a little white of its own, so compare the middles, not the edges.)
    assert max(columns) < sorted(white)[len(white) // 2], "the fox, after the word in reading order, is left of it"


def test_centred_text_is_centred_and_widths_add_up() -> None:
    text = "café 狐 🦊"
    canvas = Image.new("RGB", (400, 60), (0, 0, 0))
    draw_text(canvas, (200, 30), text, SIZE, (255, 255, 255), anchor="mm")
    box = canvas.getbbox()
    assert box is not None
    assert abs((box[0] + box[2]) / 2 - 200) < 6
    assert abs((box[2] - box[0]) - text_length(text, SIZE)) < 8


def test_fit_text_shortens_with_an_ellipsis() -> None:
    text = "café crème 狐 🦊 " * 10
    fitted = fit_text(text, SIZE, 150)
    assert fitted.endswith("…") and text_length(fitted, SIZE) <= 150
    assert fit_text("狐", SIZE, 150) == "狐"


def test_fit_text_keeps_the_longest_start_that_fits_measuring_a_few_times_not_once_a_character(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    text = "a lighthouse on a cliff at dusk, 狐 🦊, dramatic clouds, " * 30  # a long prompt: 1,680 characters
    measured = []

    def counted(text: str, size: int) -> float:
        measured.append(text)
        return text_length(text, size)

    monkeypatch.setattr(fonts, "text_length", counted)
    fitted = fit_text(text, SIZE, 400)
    assert len(measured) <= 2 + len(text).bit_length(), "halving, not a measurement per character cut"
    kept = len(fitted) - 1
    assert fitted == text[:kept] + "…" and text_length(fitted, SIZE) <= 400
    assert text_length(text[: kept + 1] + "…", SIZE) > 400, "one character more would not fit"


@pytest.mark.usefixtures("fresh_chain")
def test_without_installed_fonts_text_uses_pillows_default_with_one_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(fonts, "FONT_DIRS", (tmp_path,))
    with caplog.at_level(logging.WARNING, logger="bot.pictures.fonts"):
        canvas = Image.new("RGB", (300, 40))
        draw_text(canvas, (5, 20), "a fox", 20, (255, 255, 255))
        draw_text(canvas, (5, 20), "another fox", 20, (255, 255, 255))
    assert canvas.getbbox() is not None, "text is still drawn"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "fonts-noto-core" in warnings[0]
    assert ImageChops.difference(canvas, Image.new("RGB", (300, 40))).getbbox() is not None


def test_text_with_line_breaks_is_measured_fitted_and_drawn_as_one_line() -> None:
    """Pillow can't measure text with a line break in it: a prompt typed on two lines is folded onto one."""
    text = "a fox\nin the\r\n\tsnow"
    assert text_length(text, SIZE) == text_length("a fox in the snow", SIZE)
    assert fit_text(text, SIZE, 1000) == "a fox in the snow"
    assert "\n" not in fit_text(text * 20, SIZE, 300)
    canvas = Image.new("RGB", (600, 60), (0, 0, 0))
    draw_text(canvas, (300, 30), text, SIZE, (255, 255, 255), anchor="mm")
    assert canvas.getbbox() is not None


def test_wrap_text_breaks_between_words_and_shortens_only_a_word_too_long_for_a_line() -> None:
    lines = wrap_text("Δ = change from the previous step count · framed: where the row settles", SIZE, 400)
    assert len(lines) > 1 and all(text_length(line, SIZE) <= 400 for line in lines)
    assert " ".join(lines) == "Δ = change from the previous step count · framed: where the row settles"
    assert wrap_text("x" * 200, SIZE, 100)[0].endswith("…")

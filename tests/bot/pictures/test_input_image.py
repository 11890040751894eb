"""A member's input image: refused with one line when it can't be used, else normalised and the
changes said."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image

from bot.errors import InvalidOption
from bot.pictures.input_image import prepare_input_image


def encoded(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def opened(png: bytes) -> Image.Image:
    return Image.open(io.BytesIO(png))


def test_an_rgb_png_of_a_good_size_passes_unchanged() -> None:
    prepared = prepare_input_image(encoded(Image.new("RGB", (512, 384), (10, 20, 30))), multiple=8)
    assert (prepared.width, prepared.height, prepared.notes) == (512, 384, ())
    assert opened(prepared.png).mode == "RGB"


def test_what_is_not_an_image_is_refused_in_one_line() -> None:
    with pytest.raises(InvalidOption, match="not an image Stepgrid can read; send a PNG, JPEG or WebP"):
        prepare_input_image(b"%PDF-1.4 not an image", multiple=8)


def bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge size (its pixels are never decoded)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def test_a_decompression_bomb_is_refused_from_its_header() -> None:
    with pytest.raises(InvalidOption, match="too many pixels to open"):
        prepare_input_image(bomb_png(50_000, 50_000), multiple=8)


def test_an_animation_gives_its_first_frame_and_says_so() -> None:
    frames = [Image.new("RGB", (256, 256), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    gif = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:])
    prepared = prepare_input_image(gif, multiple=8)
    assert "animated: the first frame was used" in " ".join(prepared.notes)
    assert opened(prepared.png).getpixel((5, 5))[0] > 200


@pytest.mark.parametrize(
    ("image", "note"),
    [
        (Image.new("CMYK", (256, 256), (0, 255, 0, 0)), "converted from CMYK to RGB"),
        (Image.new("I;16", (256, 256), 40000), "converted from 16-bit to 8-bit RGB"),
        (Image.new("RGB", (256, 256), (9, 9, 9)).convert("P"), "palette colours were converted to RGB"),
        (Image.new("RGBA", (256, 256), (0, 0, 0, 0)), "transparency was flattened onto white"),
    ],
)
def test_other_colour_modes_are_converted_and_said(image: Image.Image, note: str) -> None:
    prepared = prepare_input_image(encoded(image, "TIFF" if image.mode == "CMYK" else "PNG"), multiple=8)
    assert note in " ".join(prepared.notes) and opened(prepared.png).mode == "RGB"


def test_exif_orientation_is_honoured() -> None:
    image = Image.new("RGB", (512, 256), (0, 0, 0))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise to view
    prepared = prepare_input_image(encoded(image, "JPEG", exif=exif), multiple=8)
    assert (prepared.width, prepared.height) == (256, 512)
    assert "turned upright" in " ".join(prepared.notes)


def test_a_size_off_the_models_multiple_is_resized_and_said() -> None:
    prepared = prepare_input_image(encoded(Image.new("RGB", (500, 333))), multiple=16)
    assert (prepared.width, prepared.height) == (496, 320)
    assert "resized from 500x333 to 496x320 (multiples of 16)" in " ".join(prepared.notes)


def test_a_large_photo_is_brought_within_the_pixel_cap() -> None:
    prepared = prepare_input_image(encoded(Image.new("RGB", (3000, 2000))), multiple=8, max_pixels=1024 * 1024)
    assert prepared.width * prepared.height <= 1024 * 1024 and prepared.width % 8 == 0


def test_an_image_just_over_the_open_limit_is_refused_by_its_size() -> None:
    with pytest.raises(InvalidOption, match=r"That image is 4000x3000: too many pixels to open"):
        prepare_input_image(bomb_png(4000, 3000), multiple=8)

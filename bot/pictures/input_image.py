"""An image a member sends to start from (img2img, Upscale): checked and normalised before a job is queued.

Everything here runs in a thread (Pillow decodes on the CPU). The dimensions are read from the
header before any pixel is decoded, so a decompression bomb is refused without being expanded. What
was changed (first frame of an animation, colour mode, orientation, size) is said in `notes`.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from bot.errors import InvalidOption
from inference.requests import MAX_PIXELS, MAX_SIZE, MIN_SIZE

# Pillow's own bomb guard, set to what Stepgrid could ever take: a member's image is never expanded
# past this many pixels (Pillow raises DecompressionBombError at twice the limit, warns above it).
OPEN_LIMIT = 4 * MAX_PIXELS
Image.MAX_IMAGE_PIXELS = OPEN_LIMIT
NOT_AN_IMAGE = "That attachment is not an image Stepgrid can read; send a PNG, JPEG or WebP."


@dataclass(frozen=True)
class PreparedImage:
    """An input image as the worker takes it: RGB PNG bytes of a size the model can run."""

    png: bytes
    width: int
    height: int
    notes: tuple[str, ...] = ()


@contextlib.contextmanager
def _reading_image() -> Iterator[None]:
    """Pillow's errors while an image is opened and decoded, as the one line a member reads."""
    try:
        with warnings.catch_warnings():
            # Above the limit Pillow only warns; the size checks refuse with the size named.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    except InvalidOption:
        raise
    except Image.DecompressionBombError:
        raise InvalidOption(
            f"That image has too many pixels to open (at most {OPEN_LIMIT:,}); send a smaller one."
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise InvalidOption(NOT_AN_IMAGE) from None


def image_dimensions(data: bytes) -> tuple[int, int]:
    """(width, height) from the image's header, nothing decoded; InvalidOption when it is not an image."""
    with _reading_image(), Image.open(io.BytesIO(data)) as image:
        width, height = image.size
        return width, height


def prepare_input_image(data: bytes, *, multiple: int, max_pixels: int = MAX_PIXELS) -> PreparedImage:
    """Check and normalise an input image; InvalidOption with one line saying what to do when it can't be used."""
    with _reading_image():
        image: Image.Image = Image.open(io.BytesIO(data))
        width, height = image.size  # from the header: nothing decoded yet
        if width * height > OPEN_LIMIT:
            raise InvalidOption(_too_big(width, height))
        notes = []
        if getattr(image, "is_animated", False):
            notes.append("it is animated: the first frame was used")
        image.seek(0)
        image.load()
    if _orientation(image) not in (None, 1):
        image = ImageOps.exif_transpose(image)
        notes.append("it was turned upright as its EXIF orientation says")
    converted = _to_rgb(image)
    if converted is not None:
        image, why = converted
        notes.append(why)
    image, resized = _fit(image, multiple, max_pixels)
    if resized:
        notes.append(resized)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return PreparedImage(out.getvalue(), image.width, image.height, tuple(notes))


def _too_big(width: int, height: int) -> str:
    return f"That image is {width}x{height}: too many pixels to open (at most {OPEN_LIMIT:,}); send a smaller one."


def _orientation(image: Image.Image) -> int | None:
    try:
        value = image.getexif().get(0x0112)
    except Exception:
        return None
    return int(value) if isinstance(value, int) else None


def _to_rgb(image: Image.Image) -> tuple[Image.Image, str] | None:
    """The image in 8-bit RGB and why it was converted, or None if it already is."""
    mode = image.mode
    if mode == "RGB":
        return None
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        background = Image.new("RGB", image.size, (255, 255, 255))
        rgba = image.convert("RGBA")
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background, "its transparency was flattened onto white"
    if mode == "CMYK":
        return image.convert("RGB"), "it was converted from CMYK to RGB"
    if mode == "P":
        return image.convert("RGB"), "its palette colours were converted to RGB"
    if mode.startswith("I;16") or mode in ("I", "F"):
        # 16-bit (or 32-bit) greyscale: scale to 8 bits before going to RGB.
        scaled = image.point(lambda value: value / 256) if mode.startswith("I;16") or mode == "I" else image
        return scaled.convert("L").convert("RGB"), "it was converted from 16-bit to 8-bit RGB"
    return image.convert("RGB"), f"it was converted from {mode} to RGB"


def _fit(image: Image.Image, multiple: int, max_pixels: int) -> tuple[Image.Image, str]:
    """Resize to fit `max_pixels` and the model's size multiple (at least MIN_SIZE a side); says how."""
    width, height = image.size
    scale = min(1.0, (max_pixels / (width * height)) ** 0.5, MAX_SIZE / max(width, height))
    if min(width, height) * scale < MIN_SIZE:
        scale = MIN_SIZE / min(width, height)
    new_width = max(MIN_SIZE, int(width * scale) // multiple * multiple)
    new_height = max(MIN_SIZE, int(height * scale) // multiple * multiple)
    if (new_width, new_height) == (width, height):
        return image, ""
    resized = image.resize((new_width, new_height), Image.Resampling.LANCZOS)
    return resized, f"it was resized from {width}x{height} to {new_width}x{new_height} (multiples of {multiple})"

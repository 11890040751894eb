"""A reader of A1111's `parameters` text, mirroring AUTOMATIC1111's `parse_generation_parameters`
(modules/infotext_utils.py): what A1111's PNG Info tab and "send to txt2img" do with our images."""

from __future__ import annotations

import json
import re
import struct
from typing import Any

RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
RE_IMAGESIZE = re.compile(r"^(\d+)x(\d+)$")


def unquote(text: str) -> str:
    if len(text) == 0 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        value: str = json.loads(text)
        return value
    except Exception:
        return text


def parse_generation_parameters(text: str) -> dict[str, str]:
    """A1111's reading of an infotext: Prompt, Negative prompt, every "Key: value" of the last line
    (a WxH value split into Key-1 and Key-2)."""
    result: dict[str, str] = {}
    prompt = ""
    negative_prompt = ""
    done_with_prompt = False
    *lines, lastline = text.strip().split("\n")
    if len(RE_PARAM.findall(lastline)) < 3:
        lines.append(lastline)
        lastline = ""
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            done_with_prompt = True
            line = line[16:].strip()
        if done_with_prompt:
            negative_prompt += ("" if negative_prompt == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    result["Prompt"] = prompt
    result["Negative prompt"] = negative_prompt
    for key, value in RE_PARAM.findall(lastline):
        if value and value[0] == '"' and value[-1] == '"':
            value = unquote(value)
        size = RE_IMAGESIZE.match(value)
        if size is not None:
            result[f"{key}-1"], result[f"{key}-2"] = size.group(1), size.group(2)
        else:
            result[key] = value
    return result


def read_user_comment(data: bytes) -> str:
    """The text of an EXIF UserComment, as A1111 reads the one it wrote (UNICODE or ASCII prefixed)."""
    prefix, body = data[:8], data[8:]
    if prefix == b"UNICODE\x00":
        return body.decode("utf-16-be")
    return body.decode("ascii", errors="replace").rstrip("\x00")


# --- A1111's read_info_from_image for JPEG and WebP: piexif's EXIF reading, without piexif ------------------

_TIFF_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 7: 1, 9: 4, 10: 8}  # BYTE ASCII SHORT LONG RATIONAL UNDEFINED ...


def _ifd(tiff: bytes, offset: int, order: str) -> dict[int, object]:
    """One IFD's entries with the value types piexif gives them: UNDEFINED as bytes, BYTE as a tuple of ints
    (a tuple even for one, as piexif does for counts above one), LONG/SHORT as ints, ASCII as bytes."""
    entries: dict[int, object] = {}
    (count,) = struct.unpack_from(order + "H", tiff, offset)
    for number in range(count):
        tag, kind, length, inline = struct.unpack_from(order + "HHI4s", tiff, offset + 2 + 12 * number)
        size = _TIFF_SIZES[kind] * length
        raw = inline[:size] if size <= 4 else tiff[(at := struct.unpack(order + "I", inline)[0]) : at + size]
        if kind == 7 or kind == 2:
            entries[tag] = raw
        elif kind == 1:
            entries[tag] = tuple(raw) if length > 1 else raw[0]
        elif kind in (3, 4):
            fmt = order + ("H" if kind == 3 else "I") * length
            values = struct.unpack(fmt, raw)
            entries[tag] = values[0] if length == 1 else values
    return entries


def piexif_user_comment(exif: bytes) -> object:
    """The UserComment as `piexif.load(exif)["Exif"][UserComment]` gives it (b"" without one)."""
    tiff = exif[6:] if exif.startswith(b"Exif\x00\x00") else exif
    order = ">" if tiff[:2] == b"MM" else "<"
    (first,) = struct.unpack_from(order + "I", tiff, 4)
    pointer = _ifd(tiff, first, order).get(0x8769)
    if not isinstance(pointer, int):
        return b""
    return _ifd(tiff, pointer, order).get(0x9286, b"")


def read_info_from_exif(exif: bytes) -> str:
    """What A1111's `read_info_from_image` makes of a JPEG's or WebP's EXIF: piexif's UserComment, decoded by
    `piexif.helper.UserComment.load`, else as UTF-8. A BYTE-typed comment (a tuple) raises AttributeError
    there, as it does in A1111 and sd-prompt-reader."""
    comment: Any = piexif_user_comment(exif)
    prefix = comment[:8]
    if prefix == b"UNICODE\x00":
        return bytes(comment[8:]).decode("utf-16-be")
    if prefix == b"ASCII\x00\x00\x00":
        return bytes(comment[8:]).decode("ascii")
    return comment.decode("utf8", errors="ignore")  # piexif's ValueError path: a tuple has no decode

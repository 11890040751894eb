"""A reader of A1111's `parameters` text, mirroring AUTOMATIC1111's `parse_generation_parameters`
(modules/infotext_utils.py): what A1111's PNG Info tab and "send to txt2img" do with our images."""

from __future__ import annotations

import json
import re

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

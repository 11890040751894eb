"""Reading a member's attachment (the image to start from): only Discord attachments, never a URL a
member typed, with a size cap checked before the download and a timeout on it."""

from __future__ import annotations

import asyncio
import math

import discord

from bot.errors import InvalidOption

# What a member may attach: a photo of a phone camera fits; Discord's own upload limit is 10 MB for most.
MAX_ATTACHMENT_BYTES = 16 * 1024 * 1024
# The download runs after the interaction is deferred (Discord's 3 s are met), so this guards only
# against a download that hangs; the member is answered in a follow-up.
READ_TIMEOUT_S = 30.0


async def read_attachment(
    attachment: discord.Attachment, *, max_bytes: int = MAX_ATTACHMENT_BYTES, read_timeout: float = READ_TIMEOUT_S
) -> bytes:
    """The attachment's bytes (aiohttp, on the client's own session); InvalidOption when it is too
    big, slow or gone."""
    if attachment.size > max_bytes:
        raise InvalidOption(
            f"That image is {_megabytes(attachment.size, up=True)} MB; at most {_megabytes(max_bytes)} MB. "
            "Send a smaller one."
        )
    try:
        async with asyncio.timeout(read_timeout):
            data = await attachment.read()
    except TimeoutError:
        raise InvalidOption("Discord did not send the image in time; try again.") from None
    except (discord.HTTPException, discord.NotFound):
        raise InvalidOption("The image could not be fetched from Discord; attach it again.") from None
    if len(data) > max_bytes:
        raise InvalidOption(f"That image is over {_megabytes(max_bytes)} MB. Send a smaller one.")
    return data


def _megabytes(size: int, *, up: bool = False) -> str:
    """`size` in MB to a tenth: an image's rounded up and the cap's down, so an image just over the cap never
    reads as within it ("16.8 MB; at most 17 MB")."""
    tenths = math.ceil(size / 1e5) if up else math.floor(size / 1e5)
    return f"{tenths / 10:.1f}"

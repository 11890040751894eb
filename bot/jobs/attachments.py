"""Reading a member's attachment (the image to start from): only Discord attachments, never a URL a
member typed, with a size cap checked before the download and a timeout on it."""

from __future__ import annotations

import asyncio

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
            f"That image is {attachment.size / 1e6:.1f} MB; at most {max_bytes / 1e6:.0f} MB. Send a smaller one."
        )
    try:
        async with asyncio.timeout(read_timeout):
            data = await attachment.read()
    except TimeoutError:
        raise InvalidOption("Discord did not send the image in time; try again.") from None
    except (discord.HTTPException, discord.NotFound):
        raise InvalidOption("The image could not be fetched from Discord; attach it again.") from None
    if len(data) > max_bytes:
        raise InvalidOption(f"That image is over {max_bytes / 1e6:.0f} MB. Send a smaller one.")
    return data

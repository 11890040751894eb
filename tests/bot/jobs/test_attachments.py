"""Reading a member's attachment: the size cap before and after the download, a download that hangs, one
that is gone; each refused with one line that says what to do."""

from __future__ import annotations

import asyncio
from typing import cast

import discord
import pytest

from bot.errors import InvalidOption
from bot.jobs.attachments import MAX_ATTACHMENT_BYTES, read_attachment
from tests.bot.fakes import http_error


class Attachment:
    """What read_attachment reads of a discord.Attachment: its announced size and its download."""

    def __init__(self, data: bytes, *, size: int | None = None, error: Exception | None = None) -> None:
        self.data = data
        self.size = len(data) if size is None else size
        self.error = error
        self.reads = 0
        self.hang = asyncio.Event()  # never set: a download that hangs, when `error` is TimeoutError

    async def read(self) -> bytes:
        self.reads += 1
        if isinstance(self.error, TimeoutError):
            await self.hang.wait()
        if self.error is not None:
            raise self.error
        return self.data

    def as_attachment(self) -> discord.Attachment:
        return cast(discord.Attachment, self)


async def test_the_bytes_of_an_attachment_under_the_cap_are_read() -> None:
    assert await read_attachment(Attachment(b"png bytes").as_attachment(), max_bytes=100) == b"png bytes"


async def test_an_attachment_announced_over_the_cap_is_refused_before_any_download() -> None:
    attachment = Attachment(b"", size=20_000_000)
    with pytest.raises(InvalidOption, match=r"^That image is 20\.0 MB; at most 16\.7 MB\. Send a smaller one\.$"):
        await read_attachment(attachment.as_attachment())
    assert attachment.reads == 0


async def test_an_image_just_over_the_cap_never_reads_as_within_it() -> None:
    just_over = MAX_ATTACHMENT_BYTES + 1  # 16.78 MB: "16.8 MB; at most 17 MB" said before
    with pytest.raises(InvalidOption, match=r"^That image is 16\.8 MB; at most 16\.7 MB\."):
        await read_attachment(Attachment(b"", size=just_over).as_attachment())


async def test_a_download_larger_than_announced_is_refused_too() -> None:
    with pytest.raises(InvalidOption, match=r"^That image is over 0\.1 MB\. Send a smaller one\.$"):
        await read_attachment(Attachment(b"x" * 200_000, size=10).as_attachment(), max_bytes=100_000)


async def test_a_download_that_hangs_is_given_up_with_a_line_saying_try_again() -> None:
    attachment = Attachment(b"", error=TimeoutError())
    with pytest.raises(InvalidOption, match=r"^Discord did not send the image in time; try again\.$"):
        await read_attachment(attachment.as_attachment(), read_timeout=0.01)


@pytest.mark.parametrize("status", [404, 500])
async def test_an_attachment_discord_cant_send_asks_to_attach_it_again(status: int) -> None:
    attachment = Attachment(b"", error=http_error(status, 0, "gone"))
    with pytest.raises(InvalidOption, match=r"^The image could not be fetched from Discord; attach it again\.$"):
        await read_attachment(attachment.as_attachment())

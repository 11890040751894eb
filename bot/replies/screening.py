"""What of a result may be posted where it is going: the image checker's verdict on each picture, the
channel (age-restricted or not: Discord's `nsfw` flag, a thread follows its parent) and the server's
choice (`flagged_images`). A flagged picture that may not be posted is withheld: a grid shows a neutral
tile in its cell, an image is left out and the message says so; a posted one may go as a spoiler."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from bot.formatting import counted
from bot.pictures.render import withheld_tile
from inference.protocol import GeneratedImage, JobProgress, JobResult

SPOILER_PREFIX = "SPOILER_"  # Discord blurs an attachment whose name starts with it
WITHHELD_REASON = "flagged by the image checker"


@dataclass(frozen=True)
class Screening:
    """How flagged pictures are handled for one job's message: posted (perhaps as spoilers) or withheld."""

    posts_flagged: bool = True
    spoiler: bool = False

    def withheld(self, result: JobResult) -> frozenset[int]:
        """The indexes of the result's pictures that may not be posted here."""
        if self.posts_flagged:
            return frozenset()
        return frozenset(index for index, image in enumerate(result.images) if image.flagged)

    def spoils(self, result: JobResult) -> bool:
        """Whether the posted pictures go as spoilers (some of them are flagged and the server asks for it)."""
        return self.posts_flagged and self.spoiler and any(image.flagged for image in result.images)

    def spoils_preview(self, event: JobProgress) -> bool:
        """A flagged preview shown here goes as a spoiler."""
        verdict = event.preview_verdict
        return self.posts_flagged and self.spoiler and verdict is not None and verdict.flagged

    def hides_preview(self, event: JobProgress) -> bool:
        """A flagged preview that may not be shown here (the job's previews stop with it)."""
        verdict = event.preview_verdict
        return not self.posts_flagged and verdict is not None and verdict.flagged


def channel_is_age_restricted(channel: object) -> bool:
    """Whether Discord marks the channel age-restricted; a thread follows its parent, an unknown channel is not."""
    is_nsfw = getattr(channel, "is_nsfw", None)
    return bool(is_nsfw()) if callable(is_nsfw) else False


def as_withheld(image: GeneratedImage) -> GeneratedImage:
    """The same picture's place in a grid, filled with a neutral tile that says why."""
    tile = withheld_tile(image.width, image.height, WITHHELD_REASON)
    return dataclasses.replace(image, png=tile, frames=())


def withheld_note(count: int, *, grid: bool) -> str:
    """The line a result carries when pictures were withheld."""
    what = counted(count, "grid cell") if grid else counted(count, "image")
    return (
        f"{what} withheld: the image checker flagged {'them' if count > 1 else 'it'}, and this channel isn't "
        "age-restricted (or this server posts flagged pictures nowhere)."
    )

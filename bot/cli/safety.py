"""`--safety` on the CLI's image commands: the operator's image checker (STEPGRID_SAFETY_CHECKER) runs in the
worker as it does for the bot, and a flagged picture is not written (a grid shows a neutral tile in its cell),
with one line that says which and why."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bot.config import Settings
from bot.errors import InvalidOption
from bot.formatting import counted
from bot.replies.screening import as_withheld
from inference.protocol import DEFAULT_SAFETY_CLASSIFIER, GeneratedImage, JobResult
from inference.requests import GenerateRequest, Request

# The exit status when the checker withheld every picture, so nothing was written (0: something was).
ALL_WITHHELD_EXIT = 3


def cli_checker(settings: Settings) -> str:
    """The checker `--safety` runs: the operator's, where `auto` is the default classifier even for test models
    (the bot skips it for them; here it was asked for). InvalidOption when the setting is `none`."""
    setting = settings.safety_checker.strip()
    if setting.casefold() == "auto":
        return DEFAULT_SAFETY_CLASSIFIER
    if setting.casefold() == "none":
        raise InvalidOption(
            "--safety runs the checker STEPGRID_SAFETY_CHECKER names, and it is 'none': set it to auto, diffusers, "
            "or an image classifier's hub id or folder."
        )
    return setting


@dataclass(frozen=True)
class Screened:
    """A result as the CLI may write it: grid cells the checker flagged are neutral tiles; `withheld` are the
    indexes of images (with their films) not to write; `line` says which and why ("" when none)."""

    result: JobResult
    withheld: frozenset[int] = frozenset()
    line: str = ""


def screen(request: Request, result: JobResult, paths: Sequence[Path], threshold: float) -> Screened:
    """What of `result` may be written to `paths` (as `output_paths` names them) under the checker's verdicts."""
    flagged = [index for index, image in enumerate(result.images) if image.flagged]
    if not flagged:
        return Screened(result)
    first = result.images[flagged[0]]
    checker = first.verdict.checker if first.verdict else first.frame_verdicts[0].checker
    why = f"the image checker ({checker}) flagged {'it' if len(flagged) == 1 else 'them'} at {threshold:g} or more"
    if not isinstance(request, GenerateRequest):  # every grid
        cells = tuple(as_withheld(image) if i in flagged else image for i, image in enumerate(result.images))
        labels = ", ".join(_cell_label(request, i, result.images[i]) for i in flagged)
        what = f"{len(flagged)} of {counted(len(cells), 'grid cell')}"
        line = f"withheld {what}: {labels}; {why}; they are neutral tiles in {paths[0]}."
        return Screened(dataclasses.replace(result, images=cells), line=line)
    # One image: it and its film (all of `paths`); several: the numbered files of the flagged ones.
    names = list(paths) if len(result.images) == 1 else [paths[index] for index in flagged]
    scores = ", ".join(_score(result.images[index]) for index in flagged)
    line = f"withheld {', '.join(map(str, names))} ({scores}): {why}; not written."
    if kept := [path for path in names if path.exists()]:
        line += " The file already there was" if len(kept) == 1 else " The files already there were"
        line += " left as before."
    return Screened(result, frozenset(flagged), line)


def _score(image: GeneratedImage) -> str:
    scores = [verdict.score for verdict in (image.verdict, *image.frame_verdicts) if verdict and verdict.flagged]
    return f"score {max(scores):.2f}"


def _cell_label(request: Request, index: int, image: GeneratedImage) -> str:
    """A cell as the grid shows it: its place, its steps, and its scheduler when the rows differ in it."""
    schedulers = request.lane_schedulers
    scheduler = f"{schedulers[index]}, " if len(set(schedulers)) > 1 else ""
    return f"cell {index + 1} ({scheduler}{counted(image.steps, 'step')}, {_score(image)})"

"""Which rows of a finished grid a server remembers as settle points, and where each settled.

Only honest step ladders count: `/compare-steps` (its row of N-step runs, a row per seed over several
seeds; not the stop-early row) and `/compare-schedulers` (a row per scheduler), drawn from text without
LoRAs (a LoRA or an input image moves where a ladder settles, and `/imagine`'s learned steps apply to
neither). A row with a cell the image checker withheld is left out: its Δ was measured on a neutral tile,
not on the picture.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from bot.pictures.grids import grid_rows
from bot.pictures.sweet_spot import RowChanges
from inference.protocol import GeneratedImage
from inference.requests import CompareSchedulersRequest, CompareStepsRequest, Request


def remembered_rows(
    request: Request, images: Sequence[GeneratedImage], withheld: Collection[int] = ()
) -> list[tuple[int, RowChanges]]:
    """(row index, the row measured) of each row of the grid worth remembering; [] for any other job."""
    if not isinstance(request, CompareStepsRequest | CompareSchedulersRequest):
        return []
    if request.image or request.loras or len(images) < len(request.lane_steps):
        return []
    columns = len(request.steps)
    return [
        (first // columns, row)
        for first, row in grid_rows(request, images)
        if not any(first <= index < first + columns for index in withheld)
    ]


def settle_step(row: RowChanges) -> int | None:
    """The step count where the row settled, or None if it had not by its last one."""
    return None if row.settled is None else row.steps[row.settled]

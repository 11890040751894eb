"""The sweet spot over seeds (`/compare-steps seeds: 4`) in words: where each seed's row settles, their median
and spread ("settles at a median of 20 steps (spread 20–30): at 20 steps on 3 of 4 seeds; 30 on one").

The median is the lower middle one for an even number of seeds, so it is always a step count of the grid;
a row that has not settled within the grid counts as settling after its last step count.
"""

from __future__ import annotations

import itertools
import statistics
from collections import Counter
from collections.abc import Sequence

from bot.pictures.sweet_spot import ANCESTRAL, MEASURE_NOTE, RowChanges

_NUMBERS = ("none", "one", "two", "three", "four", "five", "six", "seven", "eight")


def settle_point(row: RowChanges) -> int | None:
    """The step count where a row settles, or None where it has not settled within the grid."""
    return None if row.settled is None else row.steps[row.settled]


def seeds_summary(rows: Sequence[RowChanges], seeds: Sequence[int]) -> str:
    """The rows of a seeds grid (one per seed, in seed order) in words, with what Δ and settled mean."""
    points = [settle_point(row) for row in rows]
    return f"{settle_words(rows[0].scheduler, seeds, points, last=rows[0].steps[-1])} {MEASURE_NOTE}"


def settle_words(scheduler: str, seeds: Sequence[int], points: Sequence[int | None], *, last: int) -> str:
    """Where the rows settle, given each seed's settle point (None: not settled by `last` steps), e.g.
    "Over seeds 42–45, Euler settles at a median of 20 steps (spread 20–30): at 20 steps on 3 of 4 seeds;
    30 on one."."""
    count = len(points)
    where = f"Over {_seed_range(seeds)}, {scheduler}"
    settled = sorted(point for point in points if point is not None)
    if not settled:
        why = " (ancestral samplers add fresh noise)" if scheduler in ANCESTRAL else ""
        return f"{where} has not settled by {_steps(last)} on any of the {count} seeds{why}."
    if len(settled) == count and settled[0] == settled[-1]:
        return f"{where} settles at {_steps(settled[0])} on all {count} seeds."
    # Not settled sorts after every step count of the grid.
    median = statistics.median_low([last + 1 if point is None else point for point in points])
    if median > last:
        head = f"{where} has not settled by {_steps(last)} on most seeds"
    else:
        spread = f"{settled[0]}–{settled[-1]}" if len(settled) == count else f"{settled[0]} to not settled"
        head = f"{where} settles at a median of {_steps(median)} (spread {spread})"
    return f"{head}: {_breakdown(points, last)}."


def _breakdown(points: Sequence[int | None], last: int) -> str:
    """ "at 20 steps on 3 of 4 seeds; 30 on one; not settled by 50 on one": the most common first."""
    tally = Counter(points)
    order = sorted(tally, key=lambda point: (-tally[point], point is None, point or 0))
    parts = []
    for position, point in enumerate(order):
        what = f"not settled by {last}" if point is None else str(point)
        if position == 0:
            what = f"not settled by {_steps(last)}" if point is None else f"at {_steps(point)}"
            parts.append(f"{what} on {tally[point]} of {len(points)} seeds")
        else:
            parts.append(f"{what} on {_NUMBERS[tally[point]] if tally[point] < len(_NUMBERS) else tally[point]}")
    return "; ".join(parts)


def _seed_range(seeds: Sequence[int]) -> str:
    """ "seeds 42–45" for consecutive seeds, else each of them."""
    if all(b == a + 1 for a, b in itertools.pairwise(seeds)):
        return f"seeds {seeds[0]}–{seeds[-1]}"
    return f"seeds {', '.join(map(str, seeds))}"


def _steps(count: int) -> str:
    return f"{count} step{'' if count == 1 else 's'}"

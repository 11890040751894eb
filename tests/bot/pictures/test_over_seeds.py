"""The sweet spot over seeds in words: the median settle point and its spread, from given settle points."""

from __future__ import annotations

import pytest

from bot.pictures.over_seeds import seeds_summary, settle_words
from bot.pictures.sweet_spot import MEASURE_NOTE, RowChanges

SEEDS = (42, 43, 44, 45)


@pytest.mark.parametrize(
    ("points", "expected"),
    [
        pytest.param(
            (20, 20, 30, 20),
            "Over seeds 42–45, Euler settles at a median of 20 steps (spread 20–30): at 20 steps on 3 of 4 seeds; "
            "30 on one.",
            id="three-of-four",
        ),
        pytest.param((20, 20, 20, 20), "Over seeds 42–45, Euler settles at 20 steps on all 4 seeds.", id="all-alike"),
        pytest.param(
            (10, 30, 20, 40),
            "Over seeds 42–45, Euler settles at a median of 20 steps (spread 10–40): at 10 steps on 1 of 4 seeds; "
            "20 on one; 30 on one; 40 on one.",
            id="even-count-lower-median",
        ),
        pytest.param(
            (20, None, 10, 20),
            "Over seeds 42–45, Euler settles at a median of 20 steps (spread 10 to not settled): at 20 steps on 2 of "
            "4 seeds; 10 on one; not settled by 50 on one.",
            id="one-not-settled",
        ),
        pytest.param(
            (None, None, 20, None),
            "Over seeds 42–45, Euler has not settled by 50 steps on most seeds: not settled by 50 steps on 3 of 4 "
            "seeds; 20 on one.",
            id="median-not-settled",
        ),
        pytest.param(
            (None, None, None, None),
            "Over seeds 42–45, Euler has not settled by 50 steps on any of the 4 seeds.",
            id="none-settled",
        ),
    ],
)
def test_settle_points_in_words_give_the_median_and_the_spread(points: tuple[int | None, ...], expected: str) -> None:
    assert settle_words("Euler", SEEDS, points, last=50) == expected


def test_an_ancestral_sampler_that_never_settles_says_why() -> None:
    words = settle_words("Euler a", (7, 8), (None, None), last=40)
    assert words == "Over seeds 7–8, Euler a has not settled by 40 steps on any of the 2 seeds (ancestral samplers " \
                    "add fresh noise)."  # fmt: skip


def test_seeds_that_wrap_past_the_largest_are_each_named() -> None:
    words = settle_words("DDIM", (4294967295, 0, 1), (10, 10, 10), last=20)
    assert words == "Over seeds 4294967295, 0, 1, DDIM settles at 10 steps on all 3 seeds."


def test_the_summary_reads_each_rows_settle_point_and_says_what_the_measure_is() -> None:
    steps = (5, 10, 20)
    rows = [
        RowChanges("Euler", (0, 1, 2), steps, (0.0, 9.0, 1.0), 1),  # settles at 10
        RowChanges("Euler", (0, 1, 2), steps, (0.0, 1.0, 1.0), 0),  # settles at 5
        RowChanges("Euler", (0, 1, 2), steps, (0.0, 8.0, 1.5), 1),  # settles at 10
    ]
    assert seeds_summary(rows, (1, 2, 3)) == (
        f"Over seeds 1–3, Euler settles at a median of 10 steps (spread 5–10): at 10 steps on 2 of 3 seeds; 5 on one. "
        f"{MEASURE_NOTE}"
    )

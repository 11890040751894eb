"""Numbers and durations as people read them."""

from __future__ import annotations

from datetime import timedelta

from bot.formatting import format_amount, format_duration


def test_budget_figures_get_more_digits_when_they_would_read_the_same() -> None:
    assert format_amount(5_250_000, like=5_200_000) == "5.25M"
    assert format_amount(5_242_881, like=5_242_880) == "5,242,881"
    assert format_amount(7_900_000) == "7.9M"
    assert format_amount(9_999) == "9,999"


def test_durations_round_up_to_the_minute() -> None:
    assert format_duration(timedelta(hours=3, minutes=11, seconds=1)) == "3 h 12 min"
    assert format_duration(timedelta(seconds=20)) == "1 min"
    assert format_duration(timedelta(hours=2)) == "2 h"

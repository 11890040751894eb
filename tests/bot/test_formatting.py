"""Numbers and durations as people read them."""

from __future__ import annotations

from datetime import timedelta

from bot.formatting import about, eta_words, format_amount, format_duration
from inference.queues.eta import Eta


def test_budget_figures_get_more_digits_when_they_would_read_the_same() -> None:
    assert format_amount(5_250_000, like=5_200_000) == "5.25M"
    assert format_amount(5_242_881, like=5_242_880) == "5,242,881"
    assert format_amount(7_900_000) == "7.9M"
    assert format_amount(9_999) == "9,999"


def test_durations_round_up_to_the_minute() -> None:
    assert format_duration(timedelta(hours=3, minutes=11, seconds=1)) == "3 h 12 min"
    assert format_duration(timedelta(seconds=20)) == "1 min"
    assert format_duration(timedelta(hours=2)) == "2 h"


def test_estimates_read_as_about_so_long() -> None:
    assert [about(s) for s in (0.3, 12.4, 44, 95, 1500, 4800, 7200)] == [
        "about 1 s", "about 12 s", "about 45 s", "about 2 min", "about 25 min", "about 1 h 20 min", "about 2 h",
    ]  # fmt: skip


def test_eta_words_say_nothing_without_an_estimate() -> None:
    assert eta_words(None, waiting=True) == eta_words(None, waiting=False) == ""
    assert eta_words(Eta(left=30.0), waiting=True) == ""  # running after all: no start to tell
    assert eta_words(Eta(left=30.0, starts_in=8.0), waiting=True) == " · starts in about 8 s"
    assert eta_words(Eta(left=30.0), waiting=False) == " · about 30 s left"

"""Values quoted in one-line messages: clipped with an ellipsis, never echoed whole."""

from __future__ import annotations

from inference.clipping import MAX_ECHO, clip, echo


def test_a_short_text_is_kept_and_a_long_one_cut_to_the_limit_with_an_ellipsis() -> None:
    assert clip("fox", 3) == "fox"
    assert clip("foxes", 3) == "fo…" and len(clip("x" * 500, 60)) == 60
    assert clip("foxes", 0) == "…"  # no room: the ellipsis alone says something was there


def test_a_string_is_quoted_as_its_repr_after_clipping_so_the_quotes_survive() -> None:
    assert echo("a fox") == "'a fox'"
    quoted = echo("x" * 500)
    assert quoted.startswith("'x") and quoted.endswith("…'") and len(quoted) == MAX_ECHO + 2


def test_other_values_are_clipped_reprs() -> None:
    assert echo(3.5) == "3.5"
    assert echo(list(range(100)), limit=10) == "[0, 1, 2,…"

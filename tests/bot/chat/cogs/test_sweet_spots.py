"""`/sweet-spots`: the server's memory as a short table, 'not settled' counts shown, and how to fill it when empty."""

from __future__ import annotations

from bot.chat.cogs.sweet_spots import EMPTY, MAX_ROWS, learned_line, sweet_spots_embed, sweet_spots_table
from bot.config import Settings
from bot.limits.server import EffectiveLimits, ServerLimits
from bot.storage.sweet_spots import sweet_spot

SETTINGS = Settings(_env_file=None, learned_steps_min_grids=4)  # type: ignore[call-arg]


def test_each_model_and_scheduler_is_a_line_with_its_middle_step_range_grids_and_not_settled() -> None:
    table = sweet_spots_table(
        [sweet_spot("tiny", "Euler", {10: 1, 20: 2, None: 1}), sweet_spot("tiny", "Euler a", {None: 3, 30: 1})]
    )
    lines = table.strip("`\n").splitlines()
    assert lines[0].split() == ["model", "scheduler", "settles", "at", "grids", "not", "settled"]
    assert lines[1].split() == ["tiny", "Euler", "20", "(10–20)", "4", "1"]
    assert lines[2].split() == ["tiny", "Euler", "a", "not", "settled", "4", "3"]


def test_a_long_memory_is_cut_and_says_how_much_more_there_is() -> None:
    spots = [sweet_spot(f"model-{index}", "Euler", {20: 1}) for index in range(MAX_ROWS + 2)]
    assert sweet_spots_table(spots).endswith("\n…and 2 more")


def test_an_empty_server_is_told_how_to_fill_its_memory() -> None:
    embed = sweet_spots_embed([], EffectiveLimits.combine(None, SETTINGS))
    assert embed.description == EMPTY and "/compare-steps" in EMPTY


def test_the_footer_says_whether_imagine_uses_it_and_from_how_many_grids() -> None:
    off, on = (
        EffectiveLimits.combine(None, SETTINGS),
        EffectiveLimits.combine(ServerLimits(learned_steps=True), SETTINGS),
    )
    assert learned_line(off) == (
        "Learned steps are off (`/limits-set learned_steps: True` lets /imagine use them, from 4 grids or more)."
    )
    assert (
        learned_line(on)
        == "Learned steps are on: /imagine without steps runs the middle settle step of at least 4 grids."
    )

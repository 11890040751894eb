"""Learned steps: the middle settle step of this server's grids once there are N of them, else the default with
one line that says why."""

from __future__ import annotations

from bot.jobs.learned_steps import LearnedSteps, learned_steps
from bot.storage.sweet_spots import SweetSpot, sweet_spot


def choose(spot: SweetSpot | None, *, ceiling: int = 150, min_grids: int = 3) -> LearnedSteps:
    return learned_steps(spot, model="tiny", scheduler="DPM++ 2M Karras", default_steps=30, ceiling=ceiling,
                         min_grids=min_grids)  # fmt: skip


def test_the_middle_settle_step_of_n_grids_is_used_and_said() -> None:
    assert choose(sweet_spot("tiny", "DPM++ 2M Karras", {20: 2, 30: 1})) == LearnedSteps(
        20, "20 steps: where this server's grids settle for DPM++ 2M Karras (tiny, the middle of 3 grids)."
    )


def test_never_from_fewer_than_n_grids() -> None:
    assert choose(sweet_spot("tiny", "DPM++ 2M Karras", {20: 2}), min_grids=3) == LearnedSteps(
        None,
        "30 steps, the default: learned steps need 3 grids of DPM++ 2M Karras on tiny; this server has 2 "
        "(`/compare-steps` adds one).",
    )
    assert choose(None).steps is None and "this server has 0" in choose(None).note


def test_no_sweet_spot_when_most_grids_did_not_settle() -> None:
    chosen = choose(sweet_spot("tiny", "DPM++ 2M Karras", {20: 1, None: 2}))
    assert chosen.steps is None and "most of this server's DPM++ 2M Karras grids on tiny did not settle" in chosen.note


def test_a_learned_count_over_the_servers_step_ceiling_is_not_used() -> None:
    chosen = choose(sweet_spot("tiny", "DPM++ 2M Karras", {40: 3}), ceiling=30)
    assert chosen == LearnedSteps(
        None, "30 steps, the default: this server's DPM++ 2M Karras grids on tiny settle at 40 steps, over the "
        "30-step limit."
    )

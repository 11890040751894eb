"""The sweet-spot measure and `steps: auto`'s rule for when a run has settled, on constructed images: pure, no model."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from inference.settling import SETTLED_BELOW, SETTLED_CHECKS, SettleWatch, change_percent, check_every
from tests.inference.settling_pictures import picture

# Moving the square by 20 pixels changes a 128-pixel picture by about 11%, by 1 pixel about 0.7%.
BIG, SMALL = 20, 1

# --- change_percent ------------------------------------------------------------------------------


def test_identical_images_change_by_zero() -> None:
    assert change_percent(picture(), picture()) == 0.0


def test_larger_differences_measure_larger_in_the_expected_order() -> None:
    base = picture()
    nudged, moved, recoloured = picture(shift=2), picture(shift=20), picture(background=(230, 230, 230))
    changes = [change_percent(base, other) for other in (nudged, moved, recoloured)]
    assert 0 < changes[0] < changes[1] < changes[2]


def test_black_against_white_is_the_full_lightness_range() -> None:
    black, white = Image.new("RGB", (32, 32), (0, 0, 0)), Image.new("RGB", (32, 32), (255, 255, 255))
    assert change_percent(black, white) == pytest.approx(100, abs=0.01)


def test_pixel_noise_counts_less_than_moving_the_subject() -> None:
    rng = np.random.default_rng(0)
    noisy = np.asarray(picture(), dtype=np.int16) + rng.integers(-25, 26, size=(128, 128, 3))
    speckled = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
    assert change_percent(picture(), speckled) < change_percent(picture(), picture(shift=20))


def test_images_of_different_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="different sizes"):
        change_percent(picture(size=64), picture(size=128))


# --- check_every ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("most_steps", "every"), [(200, 20), (50, 5), (30, 3), (20, 2), (10, 2), (1, 2)])
def test_an_auto_run_is_checked_every_tenth_of_its_most_steps_and_at_least_two_apart(
    most_steps: int, every: int
) -> None:
    assert check_every(most_steps) == every


# --- SettleWatch ---------------------------------------------------------------------------------


def test_a_check_is_due_on_every_check_step_and_on_no_other() -> None:
    watch = SettleWatch(30)
    assert [step for step in range(1, 31) if watch.due(step)] == [3, 6, 9, 12, 15, 18, 21, 24, 27, 30]


def test_a_check_step_is_not_due_again_once_checked() -> None:
    # A second-order scheduler calls the model twice in one step: the step's check is made once.
    watch = SettleWatch(30)
    watch.observe(3, picture())
    assert not watch.due(3)
    assert watch.due(6)


def observed(watch: SettleWatch, shifts: list[int]) -> list[bool]:
    """What `observe` says at each check, fed the square moved to each of `shifts` in turn."""
    return [watch.observe(watch.every * (check + 1), picture(shift)) for check, shift in enumerate(shifts)]


def test_a_run_settles_only_once_enough_changes_in_a_row_were_small() -> None:
    shifts = [0, BIG] + [BIG + SMALL * (n + 1) for n in range(SETTLED_CHECKS)]
    watch = SettleWatch(30)
    said = observed(watch, shifts)
    assert watch.changes[0] > SETTLED_BELOW and all(change < SETTLED_BELOW for change in watch.changes[1:])
    assert said == [False] * (len(shifts) - 1) + [True]


def test_a_big_change_starts_the_count_of_small_ones_again() -> None:
    almost = [BIG + SMALL * (n + 1) for n in range(SETTLED_CHECKS - 1)]  # one small change short of settled
    again = 2 * BIG + SMALL * SETTLED_CHECKS
    shifts = [0, BIG, *almost, again] + [again + SMALL * (n + 1) for n in range(SETTLED_CHECKS)]
    watch = SettleWatch(30)
    said = observed(watch, shifts)
    assert [change > SETTLED_BELOW for change in watch.changes] == [
        True,
        *[False] * len(almost),
        True,
        *[False] * SETTLED_CHECKS,
    ]
    assert said == [False] * (len(shifts) - 1) + [True]

"""An admin's changes to a server's limits: normalised, checked against ceilings and each other."""

from __future__ import annotations

from typing import Any

import pytest

from bot.config import Settings
from bot.errors import UserFacingError
from bot.limits.changes import validate_limit_changes
from bot.limits.server import (
    InvalidLimit,
    ServerLimits,
)
from tests.bot.limits.shared import MODEL_SETTINGS, SETTINGS


def validate_limit_change(field: str, value: Any, current: ServerLimits, settings: Settings) -> Any:
    """One change checked on its own; its normalised value."""
    return validate_limit_changes({field: value}, current, settings)[field]


def test_default_steps_above_the_servers_max_names_the_field_and_range() -> None:
    with pytest.raises(InvalidLimit) as caught:
        validate_limit_change("default_steps", 50, ServerLimits(max_steps=40), SETTINGS)

    assert str(caught.value) == "default_steps must be 1 to 40 (this server's max steps); got 50."
    assert caught.value.field == "default_steps"
    assert isinstance(caught.value, UserFacingError)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("max_steps", 151, "max_steps must be 1 to 150 (the operator's ceiling); got 151."),
        ("max_steps", 0, "max_steps must be 1 to 150; got 0."),
        ("max_grid_cells", 13, "max_grid_cells must be 2 to 12 (the operator's ceiling); got 13."),
        ("max_grid_cells", 1, "max_grid_cells must be 2 to 12; got 1."),
        ("max_image_size", 2048, "max_image_size must be 256 to 1,024 (the operator's ceiling); got 2,048."),
        ("daily_steps_per_user", -5, "daily_steps_per_user must be 1 to 5,000; got -5."),
        ("max_concurrent_jobs_per_user", 0, "max_concurrent_jobs_per_user must be 1 to 3; got 0."),
        ("max_steps", "lots", "max_steps must be a whole number from 1 to 150; got 'lots'."),
        ("max_steps", True, "max_steps must be a whole number from 1 to 150; got True."),
    ],
)
def test_out_of_range_numbers_are_refused_with_the_range(field: str, value: object, message: str) -> None:
    with pytest.raises(InvalidLimit) as caught:
        validate_limit_change(field, value, ServerLimits(), SETTINGS)

    assert str(caught.value) == message


def test_max_steps_below_the_servers_default_is_refused() -> None:
    with pytest.raises(InvalidLimit) as caught:
        validate_limit_change("max_steps", 20, ServerLimits(default_steps=30), SETTINGS)

    assert str(caught.value) == "max_steps must be 30 to 150 (at least this server's default steps, 30); got 20."


@pytest.mark.parametrize(
    "changes",
    [
        {"max_steps": 20, "default_steps": 15},
        {"default_steps": 15, "max_steps": 20},
    ],
)
def test_max_and_default_can_move_together_in_either_order(changes: dict[str, int]) -> None:
    current = ServerLimits(max_steps=40, default_steps=30)

    assert validate_limit_changes(changes, current, SETTINGS) == {"max_steps": 20, "default_steps": 15}


def test_numbers_typed_as_text_are_accepted() -> None:
    assert validate_limit_change("max_steps", "40", ServerLimits(), SETTINGS) == 40


def test_scheduler_names_are_matched_case_insensitively_and_kept_in_canonical_order() -> None:
    names = validate_limit_change("allowed_schedulers", "unipc, EULER, euler a, Euler", ServerLimits(), SETTINGS)

    assert names == ("Euler", "Euler a", "UniPC")


def test_an_unknown_scheduler_is_refused_with_the_known_names() -> None:
    with pytest.raises(InvalidLimit, match=r"unknown scheduler 'Euler b'; known: Euler, Euler a, Heun"):
        validate_limit_change("default_scheduler", "Euler b", ServerLimits(), SETTINGS)


def test_the_default_scheduler_must_be_allowed() -> None:
    with pytest.raises(InvalidLimit, match=r"^default_scheduler must be one of this server's allowed schedulers"):
        validate_limit_change("default_scheduler", "Heun", ServerLimits(allowed_schedulers=("Euler",)), SETTINGS)
    with pytest.raises(InvalidLimit, match=r"must include this server's default scheduler \(Heun\)"):
        validate_limit_change("allowed_schedulers", ["Euler"], ServerLimits(default_scheduler="Heun"), SETTINGS)

    both = validate_limit_changes(
        {"allowed_schedulers": ["Euler"], "default_scheduler": "euler"},
        ServerLimits(default_scheduler="Heun"),
        SETTINGS,
    )
    assert both == {"allowed_schedulers": ("Euler",), "default_scheduler": "Euler"}


@pytest.mark.parametrize(
    ("changes", "settings", "message"),
    [
        ({"allowed_schedulers": "Euler, DDIM", "default_scheduler": "Heun"}, SETTINGS,
         "default_scheduler must be one of this server's allowed schedulers (Euler, DDIM); got Heun."),
        ({"allowed_models": "flux", "default_model": "sd15"}, MODEL_SETTINGS,
         "default_model must be one of this server's allowed models (flux); got sd15."),
        ({"max_steps": 20, "default_steps": 30}, SETTINGS,
         "default_steps must be 1 to 20 (this server's max steps); got 30."),
    ],
)  # fmt: skip
def test_a_default_set_with_its_list_or_maximum_is_refused_against_the_new_one(
    changes: dict[str, object], settings: Settings, message: str
) -> None:
    # Not "change the default first": the admin is changing it, in the same command.
    with pytest.raises(InvalidLimit) as caught:
        validate_limit_changes(changes, ServerLimits(), settings)
    assert str(caught.value) == message


def test_an_empty_scheduler_list_is_refused() -> None:
    with pytest.raises(InvalidLimit, match="at least one scheduler"):
        validate_limit_change("allowed_schedulers", " , ", ServerLimits(), SETTINGS)


def test_banned_words_are_folded_and_deduplicated() -> None:
    words = validate_limit_change("banned_words", "Gore,  gore , War   Crimes,", ServerLimits(), SETTINGS)

    assert words == ("gore", "war crimes")
    assert validate_limit_change("banned_words", "", ServerLimits(), SETTINGS) is None


def test_none_resets_a_field() -> None:
    assert validate_limit_change("max_steps", None, ServerLimits(max_steps=20), SETTINGS) is None


def test_an_unknown_setting_is_refused_with_the_list_of_settings() -> None:
    with pytest.raises(InvalidLimit, match=r"Unknown setting 'max_stepz'; the settings are: max_steps, default_steps"):
        validate_limit_change("max_stepz", 10, ServerLimits(), SETTINGS)


def test_learned_steps_is_switched_on_or_off_and_nothing_else() -> None:
    assert validate_limit_changes({"learned_steps": True}, ServerLimits(), SETTINGS) == {"learned_steps": True}
    with pytest.raises(InvalidLimit, match=r"^learned_steps must be on \(true\) or off \(false\); got 'yes'\.$"):
        validate_limit_changes({"learned_steps": "yes"}, ServerLimits(), SETTINGS)

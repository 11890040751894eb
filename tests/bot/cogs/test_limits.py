"""`/limits-set` and friends: option names, and how limits read in `/limits show`."""

from __future__ import annotations

from typing import Any

import pytest
from discord import app_commands

from bot.cogs.limits import OPTION_NAMES, Limits, display_value, option_name
from bot.config import Settings
from bot.server_limits import LIMIT_FIELDS, InvalidLimit, ServerLimits, validate_limit_changes

SETTINGS = Settings(_env_file=None)  # type: ignore[call-arg]


def test_limit_errors_name_the_options_the_admin_typed() -> None:
    with pytest.raises(InvalidLimit) as caught:
        validate_limit_changes({"daily_steps_per_user": 10**12}, ServerLimits(), SETTINGS)
    text = str(caught.value.renamed(option_name(caught.value.field)))
    assert text.startswith("daily_steps must be") and "daily_steps_per_user" not in text
    assert [option_name(field) for field in ("max_concurrent_jobs_per_user", "max_compute_per_request")] == [
        "concurrent_jobs",
        "compute_budget",
    ]
    assert option_name("max_steps") == "max_steps"


@pytest.mark.parametrize(("field", "value"), [("max_compute_per_request", 0), ("max_concurrent_jobs_per_user", 99)])
def test_every_renamed_option_names_itself_in_its_refusal(field: str, value: int) -> None:
    with pytest.raises(InvalidLimit) as caught:
        validate_limit_changes({field: value}, ServerLimits(), SETTINGS)
    text = str(caught.value.renamed(option_name(field)))
    assert text.startswith(f"{OPTION_NAMES[field]} must be") and field not in text


def test_limits_set_offers_every_setting_under_its_option_name() -> None:
    command = Limits.set_limits
    assert isinstance(command, app_commands.Command)
    names = [parameter.display_name for parameter in command.parameters]
    assert names == [option_name(field) for field in LIMIT_FIELDS]
    assert "compute_budget" in names and "max_compute_per_request" not in names


@pytest.mark.parametrize(
    ("name", "value", "shown"),
    [
        ("banned_words", ("war",), "1 word(s) (not listed)"),
        ("banned_words", (), "none"),
        ("max_image_size", 768, "768×768"),
        ("max_steps", 1500, "1,500"),
    ],
)
def test_values_read_as_limits_show_prints_them(name: str, value: Any, shown: str) -> None:
    assert display_value(name, value) == shown

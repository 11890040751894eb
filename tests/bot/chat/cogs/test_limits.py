"""`/limits-set` and friends: option names, and how limits read in `/limits show`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from discord import app_commands

from bot.chat.cogs.limits import OPTION_NAMES, Limits, change_line, display_value, limits_embed, option_name
from bot.config import Settings
from bot.limits.changes import validate_limit_changes
from bot.limits.server import LIMIT_FIELDS, EffectiveLimits, InvalidLimit, ServerLimits
from bot.storage.models import LimitsChange
from tests.bot.fakes import REGISTRY

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
        ("image_input", True, "on"),
        ("image_input", False, "off: members can't attach an image to start from"),
        ("max_input_megapixels", 2.5, "2.5 megapixels"),
        ("max_upscale_size", 1536, "1536×1536"),
    ],
)
def test_values_read_as_limits_show_prints_them(name: str, value: Any, shown: str) -> None:
    assert display_value(name, value) == shown


@pytest.mark.parametrize(
    ("name", "value", "shown"),
    [
        ("allowed_models", ("sd15", "flux"), "sd15, flux"),
        ("default_model", "flux", "flux"),
        ("model_max_steps", (("sdxl-turbo", 8), ("flux", 28)), "sdxl-turbo: 8, flux: 28"),
    ],
)
def test_model_limits_read_as_limits_show_prints_them(name: str, value: Any, shown: str) -> None:
    assert display_value(name, value) == shown


def test_limits_show_lists_the_model_limits_and_whose_they_are() -> None:
    settings = Settings(_env_file=None, model=REGISTRY)  # type: ignore[call-arg]
    server = ServerLimits(allowed_models=("sd15", "sdxl-turbo"), model_max_steps=(("sd15", 40),))
    embed = limits_embed(server, EffectiveLimits.combine(server, settings), [])
    fields = {field.name: field.value for field in embed.fields}
    assert fields["allowed models"] == "sd15, sdxl-turbo\n*server*"
    assert fields["default model"] == "sd15\n*operator*"
    # sd15's ceiling is the server's own, sdxl-turbo's the operator's registry ceiling.
    assert fields["max steps per model"] == "sd15: 40, sdxl-turbo: 8\n*server and operator*"


@pytest.mark.parametrize(
    ("server", "source"),
    [
        # the server's max steps is every allowed model's ceiling
        (ServerLimits(max_steps=20, allowed_models=("sd15", "flux")), "server"),
        (ServerLimits(), "operator"),
        (ServerLimits(model_max_steps=(("sd15", 500),)), "operator (caps the server's value)"),
    ],
)
def test_per_model_ceilings_name_whose_value_sets_them(server: ServerLimits, source: str) -> None:
    settings = Settings(_env_file=None, model=REGISTRY, max_steps=30)  # type: ignore[call-arg]
    embed = limits_embed(server, EffectiveLimits.combine(server, settings), [])
    fields = {field.name: field.value for field in embed.fields}
    assert fields["max steps per model"].endswith(f"*{source}*")


def test_a_change_of_per_model_ceilings_reads_plainly_in_the_history() -> None:
    change = LimitsChange(
        guild_id=1, user_id=2, field="model_max_steps", old_value=None, new_value={"flux": 28},
        changed_at=datetime(2026, 3, 14, tzinfo=UTC),
    )  # fmt: skip
    assert change_line(change).endswith("**max steps per model** operator's value → flux=28")

"""The CLI's arguments: a model chosen by its registry name, a test model's or a hub id, and the defaults taken from
where the bot takes them (a few-step LoRA's included)."""

from __future__ import annotations

import pytest

from bot.cli.arguments import cli_defaults, select_models
from bot.config import Settings
from bot.limits.server import EffectiveLimits
from tests.bot.fakes import TURBO

REGISTRY = (
    'models = [{name = "quick", source = "tiny-flux", steps = 2, max_steps = 8}, '
    '{name = "sd", source = "tiny", compare_steps = [2, 4]}, {name = "gone", source = "./no/such/folder"}]'
)


def registry_settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("STEPGRID_MODEL", REGISTRY)
    return Settings(_env_file=None)  # type: ignore[call-arg]


def test_model_names_from_the_registry_select_that_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = registry_settings(monkeypatch)
    assert [spec.source for spec in select_models("sd", settings)] == ["tiny"]
    assert select_models(None, settings)[0].name == "quick"  # the registry's default
    assert select_models("tiny-sdxl", settings)[0].source == "tiny-sdxl"  # a test model
    assert select_models("owner/some-model", settings)[0].source == "owner/some-model"  # a hub id


def test_the_cli_takes_its_defaults_from_where_the_bot_does(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = registry_settings(monkeypatch)
    limits = EffectiveLimits.combine(None, settings)
    assert cli_defaults(settings, settings.model_specs(), TURBO) == limits.request_defaults(TURBO)


def test_a_few_step_lora_in_a_cli_prompt_brings_its_defaults_as_in_discord() -> None:
    from tests.bot.limits.test_loras import WITH_LORAS

    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    specs = settings.model_specs()
    defaults = cli_defaults(settings, specs, WITH_LORAS, ["lightning"])
    assert (defaults.steps, defaults.scheduler, defaults.guidance) == (4, "Euler", 0.0)
    assert defaults == EffectiveLimits.combine(None, settings).request_defaults(WITH_LORAS, ["lightning"])

"""Settings: each value checked with one line that says what to use, typos in setting names named, and
what the worker gets. How `stepgrid` prints a bad setting is tested in tests/bot/cli/test_main.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.config import (
    Settings,
    checked_choice,
    checked_database_url,
    checked_port,
    checked_scheduler,
)


def test_a_postgres_url_gets_the_psycopg_driver_and_a_bad_one_is_named_without_its_password() -> None:
    assert checked_database_url("postgres://bot:pw@db/stepgrid") == "postgresql+psycopg://bot:pw@db/stepgrid"
    with pytest.raises(ValueError, match=r"^'mysql://bot:\*\*\*@db/x' is not a PostgreSQL URL") as refused:
        checked_database_url("mysql://bot:hunter2@db/x")
    assert "hunter2" not in str(refused.value)
    with pytest.raises(ValueError, match="it is not a database URL"):
        checked_database_url("not a url")


@pytest.mark.parametrize(("value", "port"), [(None, None), ("  ", None), ("8080", 8080), (" 1 ", 1), (65535, 65535)])
def test_a_port_is_1_to_65535_or_empty_for_off(value: object, port: int | None) -> None:
    assert checked_port(value) == port


@pytest.mark.parametrize("value", ["0", "65536", "http", "80.5"])
def test_a_port_out_of_range_or_not_a_number_says_what_to_use(value: str) -> None:
    with pytest.raises(ValueError, match="is not a port number; use 1 to 65535, or leave it empty"):
        checked_port(value)


def test_choices_and_schedulers_are_read_in_any_case_and_given_their_proper_name() -> None:
    assert checked_choice(" JSON ", ("text", "json"), "log format") == "json"
    assert checked_scheduler("dpm++ 2m karras") == "DPM++ 2M Karras"
    with pytest.raises(ValueError, match=r"^'xml' is not a log format; use one of text, json$"):
        checked_choice("xml", ("text", "json"), "log format")
    with pytest.raises(ValueError, match=r"^unknown scheduler 'Turbo'; use one of Euler"):
        checked_scheduler("Turbo")


def test_the_worker_gets_the_model_device_and_checker_settings(tmp_path: Path) -> None:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, model="tiny", device="cpu", dtype="float32", max_batch_lanes=3, model_cache_dir=tmp_path,
        safety_checker="none",
    )  # fmt: skip
    config = settings.worker_config()
    assert (config.model, config.device, config.dtype, config.max_batch_lanes) == ("tiny", "cpu", "float32", 3)
    assert (config.cache_dir, config.safety_checker) == (str(tmp_path), "none")
    assert [spec.name for spec in settings.model_specs()] == ["tiny"]

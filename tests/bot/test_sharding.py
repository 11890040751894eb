"""STEPGRID_SHARD_COUNT and STEPGRID_SHARD_IDS: read, checked in one line, and which servers a range owns."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from bot.config import Settings
from bot.sharding import ShardRange, parse_shard_ids, shard_of, spans


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "ids"),
    [("0-1", (0, 1)), ("2-3", (2, 3)), ("3", (3,)), ("0,2,4-7", (0, 2, 4, 5, 6, 7)), (" 5, 1 - 2 ", (1, 2, 5))],
)
def test_shard_ids_are_a_comma_list_of_ids_and_ranges(text: str, ids: tuple[int, ...]) -> None:
    assert parse_shard_ids(text, 8) == ids


@pytest.mark.parametrize(
    ("text", "count", "says"),
    [
        ("0-1", None, "needs STEPGRID_SHARD_COUNT too"),
        ("2-4", 4, "shard 4 is not one of the 4 shards; ids run from 0 to 3"),
        ("3-1", 4, "'3-1' runs backwards; write the lower shard first (1-3)"),
        ("0-1,1", 4, "shard 1 is listed twice"),
        ("one", 4, "'one' is not a shard id or a range of them"),
        ("0,", 4, "'' is not a shard id"),
        ("-1", 4, "'-1' is not a shard id"),
    ],
)
def test_bad_shard_ids_are_named_with_what_to_write(text: str, count: int | None, says: str) -> None:
    with pytest.raises(ValueError) as raised:
        parse_shard_ids(text, count)
    assert says in str(raised.value)


def test_without_settings_discord_chooses_the_count_and_this_process_runs_every_shard() -> None:
    assert settings().shards() is None


def test_a_count_alone_runs_every_shard_in_this_process() -> None:
    assert settings(shard_count=4).shards() == ShardRange(4, (0, 1, 2, 3))


def test_a_count_and_ids_run_those_shards() -> None:
    shards = settings(shard_count=4, shard_ids="2-3").shards()
    assert shards == ShardRange(4, (2, 3)) and str(shards) == "shards 2-3 of 4"


@pytest.mark.parametrize(
    ("values", "setting", "says"),
    [
        ({"shard_ids": "0-1"}, "shard_ids", "needs STEPGRID_SHARD_COUNT too"),
        ({"shard_count": 0}, "shard_count", "0 is not a shard count"),
        ({"shard_count": 2, "shard_ids": "0-2"}, "shard_ids", "shard 2 is not one of the 2 shards"),
    ],
)
def test_settings_refuse_bad_shards_naming_the_setting(values: dict[str, object], setting: str, says: str) -> None:
    with pytest.raises(ValidationError) as raised:
        settings(**values)
    problem = raised.value.errors()[0]
    assert problem["loc"] == (setting,) and says in problem["msg"]


def test_a_server_belongs_to_the_shard_discord_routes_it_to_and_direct_messages_to_shard_0() -> None:
    guild = (123456789 << 22) | 77
    assert shard_of(guild, 4) == 123456789 % 4 == 1
    assert ShardRange(4, (0, 1)).owns(guild) and not ShardRange(4, (2, 3)).owns(guild)
    assert ShardRange(4, (0, 1)).owns(None) and not ShardRange(4, (2, 3)).owns(None)


def test_shard_ids_are_shown_as_the_setting_writes_them() -> None:
    assert spans((0, 1, 2, 5, 7, 8)) == "0-2,5,7-8"
    assert str(ShardRange(8, (3,))) == "shard 3 of 8"

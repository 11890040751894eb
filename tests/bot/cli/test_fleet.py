"""`stepgrid worker`, `stepgrid workers` and `stepgrid run` with Redis: bad input is one line and exit 2."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest
import redis

from bot.cli.main import main
from inference.queues.wire import Keys, dumps, redis_problem
from tests.redis_server import RedisServer, free_port


def one_line(err: str) -> str:
    assert err.count("\n") == 1, f"one line: {err!r}"
    return err


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://127.0.0.1:6379/0", "is not a Redis URL (scheme 'http')"),
        ("redis://127.0.0.1:99999/0", "is not a Redis URL"),
        ("redis:///0", "names no host"),
        ("redis://127.0.0.1:6379/zero", "the database 'zero' is not a number"),
    ],
)
@pytest.mark.parametrize("command", ["worker", "workers"])
def test_a_malformed_redis_url_exits_2_with_one_line(
    command: str, url: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([command, "--redis", url]) == 2
    err = one_line(capsys.readouterr().err)
    assert message in err and "redis://HOST:6379/0" in err


def test_a_malformed_redis_url_setting_stops_the_bot_at_start(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STEPGRID_REDIS_URL", "redis//nowhere")
    assert main(["run"]) == 2
    err = one_line(capsys.readouterr().err)
    assert "STEPGRID_REDIS_URL is invalid" in err and "is not a Redis URL" in err


@pytest.mark.parametrize("argv", [["worker"], ["workers"], ["run"]])
def test_an_unreachable_redis_at_start_exits_2_with_one_line(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    monkeypatch.setenv("STEPGRID_REDIS_URL", url)
    monkeypatch.setenv("STEPGRID_DISCORD_TOKEN", "x")
    assert main(argv) == 2
    err = one_line(capsys.readouterr().err)
    assert f"Redis at {url} is unreachable" in err and err.endswith("start it, or check STEPGRID_REDIS_URL/--redis\n")


def test_no_redis_at_all_is_named(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("STEPGRID_REDIS_URL", raising=False)
    assert main(["worker"]) == 2
    assert "pass --redis redis://HOST:6379/0" in one_line(capsys.readouterr().err)


def test_a_worker_with_a_model_the_bot_does_not_know_exits_2(
    redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    client = redis.Redis.from_url(redis_server.url)
    client.set(Keys().bot_models, "tiny")
    try:
        assert main(["worker", "--redis", redis_server.url, "--models", "tiny-sdxl"]) == 2
    finally:
        client.delete(Keys().bot_models)
        client.close()
    err = one_line(capsys.readouterr().err)
    assert "the bot does not know the model 'tiny-sdxl' (it knows: tiny)" in err


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--device", "tpu"], "--device/--dtype: 'tpu' is not a device; use auto, cpu, cuda, cuda:N or mps"),
        (["--dtype", "float8"], "--device/--dtype: 'float8' is not a dtype; use one of auto, float32"),
        (["--reclaim-after", "-1"], "--reclaim-after -1: give a number of seconds above 0"),
        (["--heartbeat", "0"], "--heartbeat 0: give a number of seconds above 0"),
    ],
)
def test_a_worker_with_a_bad_option_exits_2_before_starting_its_gpu_worker(
    options: list[str], message: str, redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["worker", "--redis", redis_server.url, "--models", "tiny", *options]) == 2
    assert message in one_line(capsys.readouterr().err)


def test_with_json_logs_a_refused_worker_says_why_in_a_json_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STEPGRID_LOG_FORMAT", "json")
    monkeypatch.setenv("STEPGRID_LOG_LEVEL", "INFO")  # set by the logging setup: put back afterwards
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])  # the setup's handler goes with this test
    monkeypatch.setattr(root, "level", root.level)
    assert main(["worker", "--redis", "redis//nowhere"]) == 2
    [line] = [json.loads(line) for line in capsys.readouterr().err.splitlines()]  # `stepgrid worker | jq` reads it
    assert line["level"] == "CRITICAL" and "is not a Redis URL" in line["message"], line


def test_workers_lists_the_live_agents(redis_server: RedisServer, capsys: pytest.CaptureFixture[str]) -> None:
    client = redis.Redis.from_url(redis_server.url)
    key = Keys().agent("gpu-box-1")
    client.hset(key, mapping={"host": "gpu-box", "device": "cuda:1", "state": "ready", "models": "tiny,tiny-sdxl",
                              "infos": dumps(()), "lanes": 8, "busy": 3, "done": 42, "at": time.time()})  # fmt: skip
    client.expire(key, 30)
    try:
        assert main(["workers", "--redis", redis_server.url]) == 0
    finally:
        client.delete(key)
        client.close()
    header, row = capsys.readouterr().out.splitlines()
    assert header.split() == ["AGENT", "HOST", "DEVICE", "STATE", "MODELS", "BUSY/FREE", "DONE", "HEARTBEAT"]
    assert row.split()[:7] == ["gpu-box-1", "gpu-box", "cuda:1", "ready", "tiny,tiny-sdxl", "3/5", "42"]
    assert row.endswith("s ago")


def test_workers_says_when_no_agent_is_live(redis_server: RedisServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["workers", "--redis", redis_server.url]) == 0
    assert "no live GPU agents" in capsys.readouterr().out


def test_a_redis_that_answers_but_refuses_names_its_own_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        admin = redis.Redis(port=server.port)
        admin.config_set("maxmemory", 1)  # the default policy, noeviction, refuses every write
        with pytest.raises(redis.exceptions.OutOfMemoryError) as full:
            admin.xadd("stepgrid:jobs:tiny", {"job": "j"})
        problem = redis_problem(server.url, full.value)
        assert "is out of memory" in problem and "noeviction" in problem and "unreachable" not in problem
        admin.config_set("maxmemory", 0)

        admin.config_set("requirepass", "s3cret")
        assert main(["workers", "--redis", server.url]) == 2
        err = one_line(capsys.readouterr().err)
        assert "refused Stepgrid's login" in err and "redis://USER:PASSWORD@HOST:6379/0" in err
        assert "unreachable" not in err
    finally:
        server.stop()

"""The offline `stepgrid` command: clear one-line refusals, and a real grid through the worker."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
from pathlib import Path

import pytest

from bot.cli.main import main
from bot.config import cuda_device_count
from bot.storage.lock import database_lock, lock_path
from tests.bot.cli.stepgrid_process import one_error_line, stepgrid


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["imagine", "fox", "--steps", "0"], "steps must be 1 to 150; got 0."),
        (["imagine", "fox", "--size", "513"], "width must be a multiple of 8 from 256 to 2048; got 513."),
        (["imagine", "fox", "--size", "big"], "write it like 512 or 768x512"),
        (["imagine", "", "--model", "tiny"], "The prompt is empty"),
        (["imagine", "fox", "--scheduler", "Turbo"], "Unknown scheduler 'Turbo'"),
        (["imagine", "fox", "--scheduler", "Eular a"], "Unknown scheduler 'Eular a' (did you mean 'Euler a'?)"),
        (["imagine", "fox", "--model", "tinyy"], "--model tinyy: no such model (did you mean 'tiny'?)"),
        (["imagine", "fox", "--size", "1x1"], "width must be a multiple of 8 from 256 to 2048; got 1."),
        (["imagine", "fox", "--size", "2048x2048"], "2048x2048 is too many pixels"),
        (["imagine", "fox", "--seed", str(2**64)], f"seed must be 0 to 4294967295; got {2**64}."),
        (["imagine", "fox", "--guidance", "-3"], "guidance must be 0 to 30; got -3."),
        (
            ["compare-steps", "fox", "--steps", "5, 10,10 ,50"],
            "10 steps is in the list twice; give each step count once.",
        ),
        (["compare-steps", "fox", "--steps", "5,x,10"], "like 5,10,20,30"),
        (["compare-steps", "fox", "--steps", ",".join(map(str, range(1, 14)))], "2 to 12 step counts; got 13"),
        (["imagine", "fox", "--model", "./no/such/folder"], "--model ./no/such/folder does not exist."),
        (["compare-schedulers", "fox", "--schedulers", "Euler a"], "needs 2 to 6 schedulers; got 1."),
        (
            ["imagine", "fox", "--steps", "auto", "--scheduler", "Euler a"],
            "steps: auto stops when the image settles, and Euler a adds fresh noise at every step, so it never does",
        ),
        (
            ["compare-schedulers", "fox", "--schedulers", "Euler a,DDIM,UniPC", "--steps", "1,2,3,4,5"],
            "at most 12 cells; 3 schedulers × 5 step counts would be 15: give fewer of either.",
        ),
    ],
)
def test_bad_arguments_exit_2_with_one_clear_line(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*argv, "-o", str(tmp_path / "out.png")]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1, "one line"
    assert not (tmp_path / "out.png").exists()


def test_an_unknown_option_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["imagine", "fox", "--bogus", "-o", "x.png"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == "stepgrid: unrecognized arguments: --bogus (see --help)\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["imagine", "fox", "--steps", "ten"],
            "stepgrid imagine: argument --steps: 'ten' is not a whole number or auto",
        ),
        (["imagine", "fox", "--count", "2.5"], "stepgrid imagine: argument --count: '2.5' is not a whole number"),
        (
            ["compare-steps", "fox", "--seed", "1e3"],
            "stepgrid compare-steps: argument --seed: '1e3' is not a whole number",
        ),
        (
            ["compare-schedulers", "fox", "--guidance", "high"],
            "stepgrid compare-schedulers: argument --guidance: 'high' is not a number",
        ),
    ],
)
def test_a_word_where_a_number_goes_exits_2_saying_what_is_wrong(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "-o", "x.png"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == f"{message} (see --help)\n"


def test_an_invalid_setting_is_named_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STEPGRID_MAX_STEPS", "abc")
    assert main(["imagine", "fox", "-o", "x.png"]) == 2
    assert capsys.readouterr().err.startswith("stepgrid: the setting STEPGRID_MAX_STEPS is invalid")


def bad_databases(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Database paths an operator might get wrong, with what the one line must say."""
    folder = tmp_path / "a-folder"
    folder.mkdir()
    corrupt = tmp_path / "corrupt.sqlite3"
    corrupt.write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 16)
    garbage = tmp_path / "notes.sqlite3"
    garbage.write_text("not a database at all\n")
    foreign = tmp_path / "other-app.sqlite3"
    with sqlite3.connect(foreign) as connection:
        connection.execute("CREATE TABLE songs (title TEXT)")
    connection.close()
    return {
        "folder": (folder, "it is a folder"),
        "unwritable": (Path("/proc/stepgrid-test/stepgrid.sqlite3"), "can't be created"),
        "read-only folder": (Path("/proc/stepgrid.sqlite3"), "is not writable"),
        "corrupt": (corrupt, "damaged"),
        "not sqlite": (garbage, "not a SQLite database"),
        "foreign": (foreign, "another program's SQLite database"),
    }


@pytest.mark.parametrize("kind", ["folder", "unwritable", "read-only folder", "corrupt", "not sqlite", "foreign"])
@pytest.mark.parametrize(
    "command",
    [["db", "upgrade"], ["usage", "--csv"], ["usage", "--limits-csv"], ["db", "backup", "copy.sqlite3"], ["run"]],
)
def test_a_database_that_cannot_be_used_is_one_line_naming_the_file(
    kind: str, command: list[str], tmp_path: Path
) -> None:
    path, problem = bad_databases(tmp_path)[kind]
    reads_only = command[0] == "usage" or command[:2] == ["db", "backup"]
    if kind in ("unwritable", "read-only folder") and reads_only:
        path = Path("/proc/self/status")  # a file that exists but is no database
        problem = "not a SQLite database"
    before = path.read_bytes() if path.is_file() else None
    result = stepgrid(*command, cwd=tmp_path, STEPGRID_DATABASE_PATH=str(path), STEPGRID_DISCORD_TOKEN="x" * 20)
    assert result.returncode == 2, result.stderr
    line = one_error_line(result)
    assert str(path) in line and problem in line, line
    assert result.stdout == "" or command[0] != "usage"  # no CSV that is only a header
    assert not (tmp_path / "copy.sqlite3").exists()  # nor a backup
    if before is not None and not str(path).startswith("/proc"):
        assert path.read_bytes() == before  # left as it was


def test_run_when_discord_cannot_be_reached_is_one_line_and_a_non_zero_exit(tmp_path: Path) -> None:
    result = stepgrid(
        "run", cwd=tmp_path, STEPGRID_DISCORD_TOKEN="x" * 20, STEPGRID_MODEL="tiny",
        STEPGRID_DATABASE_PATH=str(tmp_path / "stepgrid.sqlite3"),
        STEPGRID_DISCORD_API_BASE="http://127.0.0.1:1/api/v10",  # nothing listens on port 1
        STEPGRID_DISCORD_GATEWAY_URL="ws://127.0.0.1:1/gateway",
    )  # fmt: skip
    assert result.returncode == 2
    line = one_error_line(result)
    assert line.startswith("stepgrid: cannot reach Discord (") and line.endswith("; check the network."), line


def test_with_json_logs_the_reason_run_stopped_is_a_json_line_too(tmp_path: Path) -> None:
    result = stepgrid(
        "run", cwd=tmp_path, STEPGRID_DISCORD_TOKEN="x" * 20, STEPGRID_MODEL="tiny", STEPGRID_LOG_FORMAT="json",
        STEPGRID_DATABASE_PATH=str(tmp_path / "stepgrid.sqlite3"), STEPGRID_MODLE="tiny-sdxl",
        STEPGRID_DISCORD_API_BASE="http://127.0.0.1:1/api/v10",
    )  # fmt: skip
    assert result.returncode == 2
    lines = [json.loads(line) for line in result.stderr.splitlines()]  # `stepgrid run | jq` reads them all
    assert lines[-1]["level"] == "CRITICAL" and lines[-1]["message"].startswith("cannot reach Discord ("), lines[-1]
    typo = "STEPGRID_MODLE is not a Stepgrid setting and is ignored; did you mean STEPGRID_MODEL?"
    assert [line["level"] for line in lines if line["message"] == typo] == ["WARNING"]


def test_a_second_bot_on_the_same_database_is_refused_in_one_line_and_a_dead_ones_lock_is_not(tmp_path: Path) -> None:
    database = tmp_path / "stepgrid.sqlite3"
    unreachable = {"STEPGRID_DISCORD_API_BASE": "http://127.0.0.1:1/api/v10", "STEPGRID_MODEL": "tiny"}
    with database_lock(database):  # this process stands for the running bot
        result = stepgrid("run", cwd=tmp_path, STEPGRID_DISCORD_TOKEN="x" * 20,
                          STEPGRID_DATABASE_PATH=str(database), **unreachable)  # fmt: skip
        upgrade = stepgrid("db", "upgrade", cwd=tmp_path, STEPGRID_DATABASE_PATH=str(database))
    assert result.returncode == 2, result.stderr
    line = one_error_line(result)
    assert f"another Stepgrid bot (pid {os.getpid()} on " in line and f"is using the database {database}" in line
    assert "STEPGRID_DATABASE_PATH" in line, line
    # Nor is its schema changed under it by hand.
    assert upgrade.returncode == 2 and "another Stepgrid bot" in one_error_line(upgrade)
    assert not database.exists()  # refused before any migration

    # The lock file outlives its holder (kill -9 leaves it), but the lock does not.
    assert f"pid {os.getpid()}" in lock_path(database).read_text()
    result = stepgrid("run", cwd=tmp_path, STEPGRID_DISCORD_TOKEN="x" * 20,
                      STEPGRID_DATABASE_PATH=str(database), **unreachable)  # fmt: skip
    assert one_error_line(result).startswith("stepgrid: cannot reach Discord ("), result.stderr


NO_CUDA = cuda_device_count() == 0


BAD_SETTINGS = [
    ({"STEPGRID_DTYPE": "float8"}, "STEPGRID_DTYPE is invalid: 'float8' is not a dtype"),
    ({"STEPGRID_DEVICE": "tpu"}, "STEPGRID_DEVICE is invalid: 'tpu' is not a device"),
    ({"STEPGRID_DEVICE": "cuda:99"}, "STEPGRID_DEVICE is invalid: 'cuda:99'"),
    ({"STEPGRID_DEFAULT_SCHEDULER": "Turbo"}, "STEPGRID_DEFAULT_SCHEDULER is invalid: unknown scheduler 'Turbo'"),
    ({"STEPGRID_MAX_STEPS": "many"}, "STEPGRID_MAX_STEPS is invalid"),
    ({"STEPGRID_MAX_STEPS": "500"}, "STEPGRID_MAX_STEPS is invalid: Input should be less than or equal to 150; got"),
    ({"STEPGRID_MAX_BATCH_LANES": "0"}, "STEPGRID_MAX_BATCH_LANES is invalid: Input should be greater than or equal"),
    (
        {"STEPGRID_HTTP_BIND": "localhots"},
        "STEPGRID_HTTP_BIND is invalid: 'localhots' is not an IP address or a host name this machine resolves",
    ),
    ({"STEPGRID_HTTP_BIND": "10.0.0.300"}, "STEPGRID_HTTP_BIND is invalid: '10.0.0.300' is not an IP address"),
    ({"STEPGRID_HTTP_PORT": "70000"}, "STEPGRID_HTTP_PORT is invalid: 70000 is not a port number; use 1 to 65535"),
    ({"STEPGRID_HTTP_PORT": "http"}, "STEPGRID_HTTP_PORT is invalid: 'http' is not a port number"),
    ({"STEPGRID_LOG_LEVEL": "loud"}, "STEPGRID_LOG_LEVEL is invalid: 'loud' is not a log level"),
    ({"STEPGRID_LOG_FORMAT": "xml"}, "STEPGRID_LOG_FORMAT is invalid: 'xml' is not a log format; use one of text"),
    (
        {"STEPGRID_DATABASE_URL": "mysql://bot:hunter2@db/stepgrid"},
        "STEPGRID_DATABASE_URL is invalid: 'mysql://bot:***@db/stepgrid' is not a PostgreSQL URL; use postgresql://",
    ),
    (
        {"STEPGRID_DATABASE_URL": "postgresql://db:5432"},
        "STEPGRID_DATABASE_URL is invalid: 'postgresql://db:5432' names no database",
    ),
    ({"STEPGRID_BOT_ID": "bot 1"}, "STEPGRID_BOT_ID is invalid: 'bot 1' can't name a bot process; use 1 to 63"),
    ({"STEPGRID_BOT_LEASE_SECONDS": "0.1"}, "STEPGRID_BOT_LEASE_SECONDS is invalid: Input should be greater than"),
]


if NO_CUDA:
    BAD_SETTINGS.append(({"STEPGRID_DEVICE": "cuda"}, "'cuda' asks for a CUDA GPU, but this machine has none"))


@pytest.mark.parametrize(("env", "message"), BAD_SETTINGS)
@pytest.mark.parametrize("command", [["run"], ["imagine", "a fox", "--model", "tiny", "-o", "fox.png"]])
def test_bad_settings_exit_2_with_one_line_before_anything_loads(
    env: dict[str, str], message: str, command: list[str], tmp_path: Path
) -> None:
    result = stepgrid(*command, cwd=tmp_path, STEPGRID_DISCORD_TOKEN="x" * 20, **env)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert not (tmp_path / "fox.png").exists() and not (tmp_path / "data").exists()


def test_a_http_port_in_use_stops_run_with_one_line_before_discord_is_contacted(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        unreachable = "http://127.0.0.1:9/api/v10"
        result = stepgrid("run", cwd=tmp_path, STEPGRID_DISCORD_TOKEN="x" * 20, STEPGRID_MODEL="tiny",
                          STEPGRID_HTTP_PORT=str(port), STEPGRID_DISCORD_API_BASE=unreachable)  # fmt: skip
    assert result.returncode == 2, result.stderr
    line = one_error_line(result)
    # Not "cannot reach Discord": the port was refused before the unreachable API base was tried.
    assert f"cannot serve the HTTP endpoint on 127.0.0.1:{port}" in line and "STEPGRID_HTTP_PORT" in line, line


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dtype", "float8"], "--dtype 'float8' is not a dtype"),
        (["--device", "tpu"], "--device 'tpu' is not a device"),
        (["--device", "cuda:99"], "--device 'cuda:99'"),
        (["--scheduler", "Turbo"], "Unknown scheduler 'Turbo'"),
        (["--steps", "0"], "steps must be 1 to 150"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_arguments_of_the_real_command_exit_2_with_one_line(argv: list[str], message: str, tmp_path: Path) -> None:
    result = stepgrid("imagine", "a fox", "--model", "tiny", "-o", "fox.png", *argv, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert result.stdout == ""


def test_a_registry_with_a_typo_exits_2_naming_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    registry = tmp_path / "models.toml"
    registry.write_text('[[models]]\nname = "a"\nsoruce = "tiny"\n')
    assert main(["imagine", "fox", "--model", str(registry), "-o", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'soruce'; allowed keys: name, source," in err and err.count("\n") == 1


def test_a_registry_with_a_typo_in_the_setting_is_named_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STEPGRID_MODEL", 'models = [{name = "a"}]')
    assert main(["imagine", "fox", "-o", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("stepgrid: the setting STEPGRID_MODEL is invalid") and "missing 'source'" in err


def test_a_setting_error_ends_in_one_full_stop(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STEPGRID_MODEL", "[[models]]")
    assert main(["usage", "--csv"]) == 2
    err = capsys.readouterr().err
    assert err.endswith("(every model needs a name and a source).\n"), err


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("STEPGRID_MODEL", '[[models]]\nname = "a"\nsource = "tiny"\nsteps = "' + "9" * 100_000 + '"\n'),
        ("STEPGRID_MODEL", '[[models]]\nname = "' + "n" * 100_000 + '"\nsource = "tiny"\nsteps = 0\n'),
        ("STEPGRID_MODEL", '[[models]]\nname = "a"\nsource = "tiny"\n' + "k" * 100_000 + " = 1\n"),
        ("STEPGRID_MODEL", "/" + "d" * 100_000 + ".toml"),
        ("STEPGRID_MAX_STEPS", "x" * 100_000),
        ("STEPGRID_DEVICE", "x" * 100_000),
    ],
    ids=["value", "model name", "key", "registry path", "number", "device"],
)
def test_a_huge_setting_is_clipped_in_its_error_line(name: str, value: str, tmp_path: Path) -> None:
    result = stepgrid("usage", "--csv", cwd=tmp_path, **{name: value})
    assert result.returncode == 2
    line = one_error_line(result)
    assert f"the setting {name} is invalid" in line and "…" in line and len(line) < 500, line[:1000]


@pytest.mark.parametrize("command", [["usage", "--csv"], ["db", "backup", "copy.sqlite3"]])
def test_no_database_exits_2_like_every_operator_error(command: list[str], tmp_path: Path) -> None:
    result = stepgrid(*command, cwd=tmp_path, STEPGRID_DATABASE_PATH=str(tmp_path / "nope.sqlite3"))
    assert result.returncode == 2, result.stderr
    assert "nope.sqlite3" in one_error_line(result)


@pytest.mark.parametrize(
    "command", [["usage", "--csv"], ["db", "upgrade"], ["imagine", "fox", "--steps", "0", "-o", "x.png"]]
)
def test_a_misspelt_setting_is_named_by_every_command(command: list[str], tmp_path: Path) -> None:
    result = stepgrid(*command, cwd=tmp_path, STEPGRID_MODEL="tiny", STEPGRID_MAX_STEP="20")
    assert (
        "stepgrid: warning: STEPGRID_MAX_STEP is not a Stepgrid setting and is ignored; "
        "did you mean STEPGRID_MAX_STEPS?\n"
    ) in result.stderr, result.stderr


@pytest.mark.parametrize("host", ["localhost", socket.gethostname()])
def test_a_host_name_is_a_good_http_bind(host: str, tmp_path: Path) -> None:
    with socket.socket() as holder:  # the port taken, so that `run` stops at the endpoint, after the settings
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = stepgrid("run", cwd=tmp_path, STEPGRID_DISCORD_TOKEN="x" * 20, STEPGRID_MODEL="tiny",
                          STEPGRID_HTTP_BIND=host, STEPGRID_HTTP_PORT=str(port),
                          STEPGRID_DISCORD_API_BASE="http://127.0.0.1:9/api/v10")  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "is invalid" not in result.stderr
    assert f"cannot serve the HTTP endpoint on {host}:{port}" in one_error_line(result)

"""The offline `stepgrid` command: clear one-line refusals, and a real grid through the worker."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from bot.cli.main import cli_defaults, main, save_outputs, select_models
from bot.config import Settings, cuda_device_count, unknown_settings
from bot.limits.server import EffectiveLimits
from bot.storage.lock import database_lock, lock_path
from inference.protocol import MAX_PIXELS, MAX_SIZE, MIN_SIZE, SIZE_MULTIPLE, GenerateRequest
from tests.a1111 import parse_generation_parameters
from tests.bot.fakes import TURBO, noise_png, result_for


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
        (["imagine", "fox", "--steps", "ten"], "stepgrid imagine: argument --steps: 'ten' is not a whole number"),
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


def test_the_size_help_gives_the_sizes_the_commands_take(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["imagine", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"multiples of {SIZE_MULTIPLE} from {MIN_SIZE} to {MAX_SIZE}, at most {MAX_PIXELS:,} pixels" in help_text


def test_a_refused_request_leaves_no_folder_behind(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "new" / "deeper" / "fox.png"
    assert (
        main(["imagine", "fox", "--model", "tinyy", "-o", str(output), "--film", str(tmp_path / "films" / "f.gif")])
        == 2
    )
    assert "did you mean 'tiny'?" in capsys.readouterr().err
    assert os.listdir(tmp_path) == [], "the folders are made when the image is written"


def test_an_output_that_is_not_a_png_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["imagine", "fox", "--model", "tiny", "-o", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert main(["imagine", "fox", "--model", "tiny", "-o", str(tmp_path / "x.jpg")]) == 2
    assert "ending in .png" in capsys.readouterr().err


def test_an_invalid_setting_is_named_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STEPGRID_MAX_STEPS", "abc")
    assert main(["imagine", "fox", "-o", "x.png"]) == 2
    assert capsys.readouterr().err.startswith("stepgrid: the setting STEPGRID_MAX_STEPS is invalid")


@pytest.mark.slow
def test_compare_steps_writes_a_labelled_grid_with_the_tiny_model(
    tmp_path: Path, model_cache_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STEPGRID_MODEL_CACHE_DIR", str(model_cache_dir))
    out = tmp_path / "grid.png"
    prompt = "a lighthouse on a cliff at dusk, " * 60  # 1,980 characters: far past the text encoder's 77 tokens
    argv = ["compare-steps", prompt, "--model", "tiny", "--seed", "42", "--size", "256", "--steps", "6, 2,4"]
    assert main([*argv, "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "steps 2,4,6, seed 42" in printed and "random-weight test model" in printed
    assert "The prompt was cut to the model's token limit." in printed
    grid = Image.open(out)
    assert grid.width > 3 * 256 and grid.height > 256  # three cells in a row, captions and footer below
    parsed = parse_generation_parameters(grid.info["parameters"])
    assert (parsed["X Type"], parsed["X Values"], parsed["Seed"], parsed["Model"]) == ("Steps", "2, 4, 6", "42", "tiny")


@pytest.mark.slow
def test_imagine_writes_the_png_with_its_parameters_and_the_steps_film(
    tmp_path: Path, model_cache_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STEPGRID_MODEL_CACHE_DIR", str(model_cache_dir))
    out, film = tmp_path / "fox.png", tmp_path / "films" / "fox.gif"
    argv = ["imagine", "café crème 狐 🦊", "--model", "tiny", "--seed", "7", "--size", "576", "--steps", "4"]
    assert main([*argv, "--scheduler", "DPM++ 2M Karras", "-o", str(out), "--film", str(film)]) == 0
    assert os.listdir(film.parent) == ["fox.gif"], "the film where it was asked for, as it was asked for"
    printed = capsys.readouterr().out
    assert f"wrote {out}, {film}: " in printed
    assert "The film's frames are downscaled to 512×512 (the image is 576×576)." in printed
    animation = Image.open(film)
    assert (animation.format, animation.n_frames, animation.width) == ("GIF", 4, 512)
    parsed = parse_generation_parameters(Image.open(out).info["parameters"])
    assert (parsed["Prompt"], parsed["Steps"], parsed["Seed"], parsed["Model"]) == (
        "café crème 狐 🦊",
        "4",
        "7",
        "tiny",
    )
    assert (parsed["Sampler"], parsed["Schedule type"]) == ("DPM++ 2M", "Karras")


@pytest.mark.parametrize("name", ["fox.webp", "fox.gif", "FOX.GIF"])
def test_the_film_is_written_at_the_path_asked_for_in_the_format_its_name_says(tmp_path: Path, name: str) -> None:
    request = GenerateRequest("a fox", steps=5, width=384, height=384, film=True)
    result = result_for("job", request)
    frames = tuple(noise_png(384, 384) for _ in range(5))  # WebP would be smaller: the name decides
    result = dataclasses.replace(result, images=(dataclasses.replace(result.images[0], frames=frames),))
    paths, problem = save_outputs(request, result, tmp_path / "fox.png", tmp_path / name)
    assert problem is None and paths == [tmp_path / "fox.png", tmp_path / name]
    assert sorted(os.listdir(tmp_path)) == sorted(["fox.png", name]), "nothing else written"
    film = Image.open(tmp_path / name)
    assert (film.format, film.n_frames, film.width) == (Path(name).suffix[1:].upper(), 5, 384), "not shrunk"


def test_a_film_path_that_is_not_an_animation_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["imagine", "fox", "-o", str(tmp_path / "a.png"), "--film", str(tmp_path / "a.mp4")]) == 2
    assert "ending in .webp or .gif" in capsys.readouterr().err


@pytest.mark.slow
def test_compare_schedulers_writes_a_grid_with_a_labelled_row_per_scheduler_and_says_where_each_settles(
    tmp_path: Path, model_cache_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STEPGRID_MODEL_CACHE_DIR", str(model_cache_dir))
    out = tmp_path / "grid.png"
    argv = ["compare-schedulers", "a red fox", "--model", "tiny", "--seed", "42", "--size", "256",
            "--schedulers", "euler a,DDIM", "--steps", "2,4,6"]  # fmt: skip
    assert main([*argv, "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Euler a, DDIM, steps 2,4,6, seed 42" in printed
    assert "For this prompt and seed: Euler a " in printed and "; DDIM " in printed
    grid = Image.open(out)
    # Three columns of cells plus the row labels' margin; two rows plus column labels, captions and footer.
    assert grid.width > 3 * 256 + 50 and grid.height > 2 * 256 + 4 * 28


def test_a_film_path_that_cannot_be_written_is_named_as_the_film(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["imagine", "fox", "-o", str(tmp_path / "a.png"), "--film", "/proc/stepgrid-film.webp"]) == 2
    assert capsys.readouterr().err.startswith("stepgrid: --film /proc/stepgrid-film.webp: can't write in /proc (")


# --- operator mistakes, through the real `stepgrid` command ---------------------------------------------

STEPGRID = Path(sys.executable).with_name("stepgrid")


def stepgrid(*argv: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`stepgrid argv...` in a clean environment (no STEPGRID_* from outside, no .env in `cwd`)."""
    clean = {name: value for name, value in os.environ.items() if not name.startswith("STEPGRID_")}
    return subprocess.run(
        [str(STEPGRID), *argv], cwd=cwd, env={**clean, **env}, capture_output=True, text=True, timeout=120
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one `stepgrid: ...` line a refused command printed (its log lines aside), with no traceback."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("stepgrid:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


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


@pytest.mark.parametrize(
    ("output", "problem"),
    [
        ("/proc/stepgrid-test/out.png", "can't be created"),
        ("/proc/out.png", "can't write in /proc"),
        ("/proc/self/status/out.png", "-o /proc/self/status/out.png: /proc/self/status is a file, not a folder."),
    ],
)
def test_an_output_that_cannot_be_written_is_refused_before_anything_renders(
    output: str, problem: str, tmp_path: Path
) -> None:
    result = stepgrid("imagine", "a fox", "--model", "tiny", "-o", output, cwd=tmp_path)
    assert result.returncode == 2
    assert problem in one_error_line(result)
    assert "loading" not in result.stderr  # refused before the worker started


@pytest.mark.slow
def test_a_finished_image_is_never_lost_when_its_file_cannot_be_written(tmp_path: Path, model_cache_dir: Path) -> None:
    output = tmp_path / "fox.png"
    output.symlink_to("/dev/full")  # the folder takes files, but writing fails: a disk that filled up meanwhile
    result = stepgrid(
        "imagine", "a fox", "--model", "tiny", "--steps", "2", "--size", "256", "--seed", "3", "-o", str(output),
        cwd=tmp_path, STEPGRID_MODEL_CACHE_DIR=str(model_cache_dir),
    )  # fmt: skip
    assert result.returncode == 1
    line = one_error_line(result)
    assert f"could not write {output} (No space left on device); saved to " in line, line
    rescued = Path(line.split("saved to ", 1)[1].removesuffix(" instead."))
    assert rescued.name == "fox.png" and Image.open(rescued).size == (256, 256)


@pytest.mark.slow
def test_ctrl_c_during_a_render_stops_without_a_traceback(tmp_path: Path, model_cache_dir: Path) -> None:
    clean = {name: value for name, value in os.environ.items() if not name.startswith("STEPGRID_")}
    env = {**clean, "STEPGRID_MODEL_CACHE_DIR": str(model_cache_dir), "STEPGRID_MAX_BATCH_LANES": "1"}
    slow = ",".join(str(steps) for steps in range(139, 151))  # twelve cells on one lane: still running when interrupted
    command = [str(STEPGRID), "compare-steps", "a fox", "--model", "tiny", "--size", "512", "--steps", slow]
    process = subprocess.Popen(
        [*command, "-o", str(tmp_path / "grid.png")], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    assert process.stderr is not None
    seen = []
    for line in process.stderr:  # the worker is ready and the job submitted right after this line
        seen.append(line)
        if line.startswith("model tiny on"):
            break
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
    rest = process.stderr.read()
    assert process.wait(timeout=120) == 130
    stderr = "".join(seen) + rest
    assert "Traceback" not in stderr, stderr
    assert rest.strip().splitlines()[-1] == "stepgrid: interrupted; nothing was written."
    assert not (tmp_path / "grid.png").exists()


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
    ({"STEPGRID_HTTP_BIND": "localhots"}, "STEPGRID_HTTP_BIND is invalid: 'localhots' is not an IP address"),
    ({"STEPGRID_HTTP_BIND": "10.0.0.300"}, "STEPGRID_HTTP_BIND is invalid: '10.0.0.300' is not an IP address"),
    ({"STEPGRID_HTTP_PORT": "70000"}, "STEPGRID_HTTP_PORT is invalid: 70000 is not a port number; use 1 to 65535"),
    ({"STEPGRID_HTTP_PORT": "http"}, "STEPGRID_HTTP_PORT is invalid: 'http' is not a port number"),
    ({"STEPGRID_LOG_LEVEL": "loud"}, "STEPGRID_LOG_LEVEL is invalid: 'loud' is not a log level"),
    ({"STEPGRID_LOG_FORMAT": "xml"}, "STEPGRID_LOG_FORMAT is invalid: 'xml' is not a log format; use one of text"),
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


def test_a_misspelled_setting_in_the_environment_or_env_file_is_named_with_the_likely_one(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("STEPGRID_HTTP_PROT=8080\nSTEPGRID_LOG_LEVEL=DEBUG\n")
    environ = {"STEPGRID_MODEL": "tiny", "stepgrid_max_step": "20", "STEPGRID_COLOUR": "red", "HOME": "/root"}
    assert unknown_settings(environ, env_file) == [
        "STEPGRID_COLOUR is not a Stepgrid setting and is ignored; see .env.example for the settings",
        "STEPGRID_HTTP_PROT is not a Stepgrid setting and is ignored; did you mean STEPGRID_HTTP_PORT?",
        "stepgrid_max_step is not a Stepgrid setting and is ignored; did you mean STEPGRID_MAX_STEPS?",
    ]


def test_an_empty_http_port_turns_the_endpoint_off() -> None:
    settings = Settings(_env_file=None, http_port="")  # type: ignore[call-arg]
    assert settings.http_port is None and settings.http_bind == "127.0.0.1"


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


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model", "ladder", "scheduler"),
    [("tiny-flux", "1,2,3,4,6,8", "Euler"), ("tiny-sdxl", "5,10,20,30,40,50", "Euler a")],
)
def test_compare_steps_without_steps_uses_the_models_own_ladder_and_scheduler(
    model: str, ladder: str, scheduler: str, tmp_path: Path, model_cache_dir: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.setenv("STEPGRID_MODEL_CACHE_DIR", str(model_cache_dir))
    out = tmp_path / "grid.png"
    assert (
        main(["compare-steps", "a lighthouse", "--model", model, "--seed", "1", "--size", "256", "-o", str(out)]) == 0
    )
    assert f"{scheduler}, steps {ladder}, seed 1" in capsys.readouterr().out
    assert Image.open(out).width > 3 * 256


@pytest.mark.slow
def test_a_scheduler_the_model_cant_run_exits_2_with_the_ones_it_can(
    tmp_path: Path, model_cache_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STEPGRID_MODEL_CACHE_DIR", str(model_cache_dir))
    out = tmp_path / "x.png"
    assert main(["imagine", "fox", "--model", "tiny-flux", "--scheduler", "DDIM", "--size", "256", "-o", str(out)]) == 2
    assert "can't run the scheduler 'DDIM'; choose one of: Euler, Heun, DPM++ 2M, UniPC." in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
def test_a_registry_file_as_the_model_runs_its_first_model(
    tmp_path: Path, model_cache_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STEPGRID_MODEL_CACHE_DIR", str(model_cache_dir))
    registry = tmp_path / "models.toml"
    registry.write_text('[[models]]\nname = "quick"\nsource = "tiny-flux"\nsteps = 2\n\n'
                        '[[models]]\nname = "gone"\nsource = "./no/such/folder"\n')  # fmt: skip
    out = tmp_path / "fox.png"
    assert main(["imagine", "fox", "--model", str(registry), "--size", "256", "-o", str(out)]) == 0
    assert "Euler, steps 2," in capsys.readouterr().out and out.is_file()


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


# --- models --------------------------------------------------------------------------------------------

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


def test_a_registry_name_with_a_typo_exits_2_naming_the_configured_models(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STEPGRID_MODEL", REGISTRY)
    assert main(["imagine", "fox", "--model", "qiuck", "-o", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        "stepgrid: --model qiuck: no such model (did you mean 'quick'?); "
        "choose one of the configured models (quick, sd,"
    )
    assert err.count("\n") == 1


def test_models_without_loading_lists_the_registry(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STEPGRID_MODEL", REGISTRY)
    assert main(["models", "--no-load"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "configured (STEPGRID_MODEL):",
        "  quick (default): tiny-flux · steps 2, max steps 8",
        "  sd: tiny · ladder 2,4",
        "  gone: ./no/such/folder",
        "built in, to try offline (random weights, --model NAME): tiny, tiny-sdxl, tiny-flux, tiny-flux-dev, tiny-sd3",
    ]


@pytest.mark.parametrize(
    ("option", "message"),
    [(["--device", "tpu"], "--device 'tpu' is not a device"), (["--dtype", "fp8"], "--dtype 'fp8' is not a dtype")],
)
def test_models_with_a_bad_device_or_dtype_exits_2_before_starting_a_worker(
    option: list[str], message: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STEPGRID_MODEL", "tiny")
    assert main(["models", *option]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"stepgrid: {message}") and err.count("\n") == 1, err


def test_the_cli_takes_its_defaults_from_where_the_bot_does(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = registry_settings(monkeypatch)
    limits = EffectiveLimits.combine(None, settings)
    assert cli_defaults(settings, settings.model_specs(), TURBO) == limits.request_defaults(TURBO)


@pytest.mark.slow
def test_models_loads_them_and_shows_each_ones_defaults_and_which_failed(
    model_cache_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STEPGRID_MODEL_CACHE_DIR", str(model_cache_dir))
    monkeypatch.setenv("STEPGRID_MODEL", REGISTRY)
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "  quick: flux — random-weight test model" in out
    assert "    defaults: 2 steps, Euler, no guidance (ignored), no negative prompt, 256x256" in out
    assert "    defaults: 30 steps, Euler a, guidance 7.5, 256x256" in out
    assert "    compare-steps ladder: 1,2,3,4,6,8; max steps 8" in out
    assert "  sd: sd" in out and "compare-steps ladder: 2,4; max steps 150" in out
    assert "unavailable:\n  gone: " in out


@pytest.mark.slow
def test_imagine_with_a_registry_name_runs_that_entry_with_its_defaults(
    tmp_path: Path, model_cache_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STEPGRID_MODEL_CACHE_DIR", str(model_cache_dir))
    monkeypatch.setenv("STEPGRID_MODEL", REGISTRY)
    out = tmp_path / "grid.png"
    assert main(["compare-steps", "a fox", "--model", "sd", "--seed", "3", "-o", str(out)]) == 0
    assert "Euler a, steps 2,4, seed 3" in capsys.readouterr().out  # the entry's ladder, its family's scheduler
    assert Image.open(out).width > 2 * 256


@pytest.mark.slow
def test_steps_over_a_registry_ceiling_exit_2_in_one_line(
    tmp_path: Path, model_cache_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STEPGRID_MODEL_CACHE_DIR", str(model_cache_dir))
    monkeypatch.setenv("STEPGRID_MODEL", REGISTRY)
    assert main(["imagine", "fox", "--model", "quick", "--steps", "12", "-o", str(tmp_path / "x.png")]) == 2
    assert "steps must be at most 8 for the model quick; got 12." in capsys.readouterr().err


def broken_models(tiny: Path, tmp_path: Path) -> dict[str, tuple[str, str, str]]:
    """Models an operator might give --model that fail to load, made from the saved tiny model, with what
    the one line must say went wrong and what to do."""
    folders = {}
    for name in ("img2img", "no-such-class", "cut-off-weights", "no-weights"):
        folders[name] = shutil.copytree(tiny, tmp_path / name)
    for name, pipeline in (("img2img", "StableDiffusionImg2ImgPipeline"), ("no-such-class", "NoSuchPipeline")):
        index = folders[name] / "model_index.json"
        index.write_text(index.read_text().replace('"StableDiffusionPipeline"', f'"{pipeline}"'))
    weights = Path("unet/diffusion_pytorch_model.safetensors")
    (folders["cut-off-weights"] / weights).write_bytes((tiny / weights).read_bytes()[:1000])  # a download cut off
    (folders["no-weights"] / weights).unlink()
    again = "Save or download that folder again, whole, or give a hub id"
    return {
        "img2img": ("./img2img", "is a StableDiffusionImg2ImgPipeline; Stepgrid runs", "give one of those"),
        "no-such-class": ("./no-such-class", "is a NoSuchPipeline; Stepgrid runs", "give one of those"),
        "cut-off-weights": ("./cut-off-weights", "(Unable to load weights from checkpoint file", again),
        "no-weights": ("./no-weights", "(Error no file named diffusion_pytorch_model.bin found", again),
        "offline hub id": ("owner/not-cached", "(HF_HUB_OFFLINE is set and the model is not in the", "Give a local"),
    }


@pytest.mark.slow
@pytest.mark.parametrize("case", ["img2img", "no-such-class", "cut-off-weights", "no-weights", "offline hub id"])
def test_a_model_that_fails_to_load_exits_2_with_one_line_saying_what_to_do(
    case: str, tmp_path: Path, model_cache_dir: Path
) -> None:
    from inference.loading import ensure_test_model  # torch: only this test of the file needs it here

    model, reason, advice = broken_models(ensure_test_model("tiny", model_cache_dir), tmp_path)[case]
    result = stepgrid(
        "imagine", "a fox", "--model", model, "--steps", "2", "--size", "256", "-o", str(tmp_path / "fox.png"),
        cwd=tmp_path, STEPGRID_MODEL_CACHE_DIR=str(model_cache_dir), HF_HUB_OFFLINE="1",
    )  # fmt: skip
    line = one_error_line(result)  # and no traceback, from the command or its worker
    assert result.returncode == 2, result.stderr
    assert reason in line and advice in line and line.endswith("(--model, STEPGRID_MODEL or a registry source)."), line
    assert [other for other in result.stderr.splitlines() if other != line] == [f"loading {model} ..."], result.stderr
    assert not (tmp_path / "fox.png").exists()


@pytest.mark.slow
def test_models_exits_2_when_no_configured_model_loads(
    tmp_path: Path, model_cache_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from inference.loading import ensure_test_model

    broken_models(ensure_test_model("tiny", model_cache_dir), tmp_path)
    monkeypatch.setenv("STEPGRID_MODEL_CACHE_DIR", str(model_cache_dir))
    monkeypatch.setenv("STEPGRID_MODEL", str(tmp_path / "img2img"))
    assert main(["models"]) == 2
    assert "no model loaded" in capsys.readouterr().err

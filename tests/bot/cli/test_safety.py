"""`--safety` on the CLI's image commands, through the real `stepgrid` and its worker with a tiny rigged
classifier (tests/safety_checkers.py): a flagged image and its film are not written, a flagged grid cell is
a neutral tile, one line says which and why; `stepgrid models` names the checker or why it can't load."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
from PIL import Image

from bot.cli.outputs import output_paths, save_outputs
from bot.cli.safety import ALL_WITHHELD_EXIT, screen
from inference.protocol import SafetyVerdict
from inference.requests import GenerateRequest
from tests.bot.cli.stepgrid_process import one_error_line, stepgrid
from tests.bot.fakes import result_for

TILE = (64, 66, 71)  # the neutral tile's grey (bot.pictures.render.WITHHELD_BACKGROUND)


@pytest.fixture(scope="module")
def flags_all(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.safety_checkers import save_tiny_classifier  # torch: only the tests that need it load it

    return save_tiny_classifier(tmp_path_factory.mktemp("checker") / "flags-all", flags=True)


@pytest.fixture(scope="module")
def flags_none(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.safety_checkers import save_tiny_classifier

    return save_tiny_classifier(tmp_path_factory.mktemp("checker") / "flags-none", flags=False)


def _run(tmp_path: Path, cache: Path, checker: Path | str, *argv: str) -> tuple[int, str, str]:
    result = stepgrid(*argv, cwd=tmp_path, STEPGRID_MODEL_CACHE_DIR=str(cache), STEPGRID_SAFETY_CHECKER=str(checker))
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, result.stdout, result.stderr


@pytest.mark.slow
def test_a_flagged_image_and_its_film_are_not_written_and_one_line_says_why(
    tmp_path: Path, model_cache_dir: Path, flags_all: Path
) -> None:
    out, film = tmp_path / "fox.png", tmp_path / "fox.gif"
    out.write_bytes(b"an older picture")
    argv = ["imagine", "a fox", "--model", "tiny", "--steps", "3", "--size", "256", "--safety"]
    code, stdout, stderr = _run(tmp_path, model_cache_dir, flags_all, *argv, "-o", str(out), "--film", str(film))
    assert code == ALL_WITHHELD_EXIT, stderr
    assert stdout.splitlines() == [
        f"withheld {out}, {film} (score 1.00): the image checker ({flags_all}) flagged it at 0.5 or more; not "
        "written. The file already there was left as before."
    ]
    assert f"image checker {flags_all}: flags a score of 0.5 or more" in stderr
    assert out.read_bytes() == b"an older picture" and not film.exists()


@pytest.mark.slow
def test_upscale_with_a_flagged_result_writes_nothing(tmp_path: Path, model_cache_dir: Path, flags_all: Path) -> None:
    source, out = tmp_path / "in.png", tmp_path / "new" / "up.png"
    Image.new("RGB", (128, 128), (30, 120, 200)).save(source)
    argv = ["upscale", str(source), "--prompt", "a fox", "--model", "tiny", "--steps", "2", "--safety"]
    code, stdout, _ = _run(tmp_path, model_cache_dir, flags_all, *argv, "-o", str(out))
    assert code == ALL_WITHHELD_EXIT
    assert stdout.startswith(f"withheld {out} (score 1.00): the image checker") and stdout.count("\n") == 1
    assert not out.parent.exists(), "no folder made for a file that was not written"


@pytest.mark.slow
def test_a_grid_keeps_its_place_for_each_flagged_cell_as_a_neutral_tile(
    tmp_path: Path, model_cache_dir: Path, flags_all: Path
) -> None:
    out = tmp_path / "grid.png"
    argv = ["compare-schedulers", "a fox", "--model", "tiny", "--seed", "4", "--size", "256", "--steps", "2,3",
            "--schedulers", "Euler,DDIM", "--safety", "-o", str(out)]  # fmt: skip
    code, stdout, stderr = _run(tmp_path, model_cache_dir, flags_all, *argv)
    assert code == 0, stderr
    lines = stdout.splitlines()
    assert lines[0].startswith(f"wrote {out}: Euler, DDIM, steps 2,3, seed 4")
    assert lines[1] == (
        "withheld 4 of 4 grid cells: cell 1 (Euler, 2 steps, score 1.00), cell 2 (Euler, 3 steps, score 1.00), "
        "cell 3 (DDIM, 2 steps, score 1.00), cell 4 (DDIM, 3 steps, score 1.00); the image checker "
        f"({flags_all}) flagged them at 0.5 or more; they are neutral tiles in {out}."
    )
    grid = Image.open(out).convert("RGB")
    assert grid.getpixel((grid.width - 30, 60)) == TILE, "the last column's first cell is the neutral tile"


@pytest.mark.slow
def test_pictures_the_checker_passes_are_written_as_without_it(
    tmp_path: Path, model_cache_dir: Path, flags_none: Path
) -> None:
    out = tmp_path / "fox.png"
    argv = ["imagine", "a fox", "--model", "tiny", "--steps", "2", "--size", "256", "--count", "2", "--safety"]
    code, stdout, stderr = _run(tmp_path, model_cache_dir, flags_none, *argv, "-o", str(out))
    assert code == 0, stderr
    assert stdout.startswith(f"wrote {tmp_path / 'fox-1.png'}, {tmp_path / 'fox-2.png'}: ") and "withheld" not in stdout
    assert f"image checker {flags_none}: " in stderr


def test_safety_with_no_checker_configured_exits_2_before_loading(tmp_path: Path) -> None:
    result = stepgrid("imagine", "a fox", "--model", "tiny", "--safety", "-o", str(tmp_path / "fox.png"),
                      cwd=tmp_path, STEPGRID_SAFETY_CHECKER="none")  # fmt: skip
    assert result.returncode == 2
    assert "--safety runs the checker STEPGRID_SAFETY_CHECKER names, and it is 'none'" in one_error_line(result)
    assert "loading" not in result.stderr


@pytest.mark.slow
def test_a_checker_that_cannot_load_exits_2_in_one_line_and_writes_nothing(
    tmp_path: Path, model_cache_dir: Path
) -> None:
    out = tmp_path / "fox.png"
    result = stepgrid(
        "imagine", "a fox", "--model", "tiny", "--steps", "2", "--size", "256", "--safety", "-o", str(out),
        cwd=tmp_path, STEPGRID_MODEL_CACHE_DIR=str(model_cache_dir), STEPGRID_SAFETY_CHECKER=str(tmp_path / "gone"),
    )  # fmt: skip
    assert result.returncode == 2
    line = one_error_line(result)
    assert line.startswith("stepgrid: The image safety checker") and "fix STEPGRID_SAFETY_CHECKER" in line, line
    assert not out.exists()


def test_only_the_flagged_ones_of_several_images_are_left_unwritten(tmp_path: Path) -> None:
    request = GenerateRequest("a fox", steps=2, width=64, height=64, count=3, seed=10)
    result = result_for("job", request)
    verdicts = [SafetyVerdict(flagged, score, "rigged") for flagged, score in ((False, 0.1), (True, 0.93), (False, 0))]
    images = tuple(dataclasses.replace(image, verdict=v) for image, v in zip(result.images, verdicts, strict=True))
    result = dataclasses.replace(result, images=images)
    out = tmp_path / "fox.png"
    screened = screen(request, result, output_paths(request, out), 0.5)
    assert screened.line == (
        f"withheld {tmp_path / 'fox-2.png'} (score 0.93): the image checker (rigged) flagged it at 0.5 or more; "
        "not written."
    )
    paths, problem = save_outputs(request, result, out, withheld=screened.withheld)
    assert problem is None and paths == [tmp_path / "fox-1.png", tmp_path / "fox-3.png"]
    assert sorted(os.listdir(tmp_path)) == ["fox-1.png", "fox-3.png"]


@pytest.mark.slow
def test_models_names_the_checker_it_loaded_and_one_that_cannot_load(
    tmp_path: Path, model_cache_dir: Path, flags_all: Path
) -> None:
    env = {"STEPGRID_MODEL_CACHE_DIR": str(model_cache_dir), "STEPGRID_MODEL": "tiny"}
    loaded = stepgrid("models", cwd=tmp_path, STEPGRID_SAFETY_CHECKER=str(flags_all), **env)
    assert loaded.returncode == 0, loaded.stderr
    assert f"image checker: {flags_all}, flags a score of 0.5 or more" in loaded.stdout
    broken = stepgrid("models", cwd=tmp_path, STEPGRID_SAFETY_CHECKER=str(tmp_path / "gone"), **env)
    assert broken.returncode == 2
    line = one_error_line(broken)
    assert line.startswith(f"stepgrid: The image safety checker '{tmp_path / 'gone'}' could not be loaded"), line

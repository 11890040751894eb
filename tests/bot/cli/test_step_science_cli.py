"""`stepgrid compare-guidance` and `compare-steps --stop-early` end to end: the real CLI, a spawned worker and
the tiny models."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from bot.cli.main import main
from bot.pictures.render import png_parameters


@pytest.mark.slow
def test_compare_guidance_writes_a_labelled_grid_with_its_xyz_parameters_and_says_where_it_settles(
    tmp_path: Path, model_cache_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STEPGRID_MODEL_CACHE_DIR", str(model_cache_dir))
    out = tmp_path / "grid.png"
    argv = ["compare-guidance", "a red fox", "--model", "tiny", "--seed", "42", "--size", "256",
            "--guidance", "7.5, 1", "--steps", "2", "--scheduler", "Euler"]  # fmt: skip
    assert main([*argv, "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Euler, steps 2, seed 42" in printed
    assert "For this prompt and seed: at 2 steps, " in printed
    grid = Image.open(out)
    assert grid.width > 2 * 256 and grid.height > 256 + 3 * 28
    parameters = png_parameters(out.read_bytes()) or ""
    assert parameters.endswith('Script: X/Y/Z plot, X Type: CFG Scale, X Values: "1, 7.5"')


@pytest.mark.slow
def test_compare_guidance_on_a_model_that_ignores_guidance_explains_in_one_line_and_writes_nothing(
    tmp_path: Path, model_cache_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STEPGRID_MODEL_CACHE_DIR", str(model_cache_dir))
    out = tmp_path / "grid.png"
    assert main(["compare-guidance", "a fox", "--model", "tiny-flux", "--size", "256", "-o", str(out)]) == 2
    assert capsys.readouterr().err == (
        "stepgrid: The model tiny-flux (flux) is distilled without guidance: every value gives the same image; "
        "compare steps or schedulers instead.\n"
    )
    assert not out.exists()


@pytest.mark.parametrize(
    ("guidance", "problem"),
    [("high", "Could not read guidance values 'high'"), ("3", "needs at least 2 guidance values; got 1.")],
)
def test_unreadable_guidance_values_are_refused_before_a_worker_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], guidance: str, problem: str
) -> None:
    assert main(["compare-guidance", "fox", "--guidance", guidance, "-o", str(tmp_path / "g.png")]) == 2
    err = capsys.readouterr().err
    assert problem in err and err.count("\n") == 1


@pytest.mark.slow
def test_compare_steps_stop_early_writes_the_stopped_row_under_the_honest_one_and_says_how_far_apart(
    tmp_path: Path, model_cache_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STEPGRID_MODEL_CACHE_DIR", str(model_cache_dir))
    out = tmp_path / "grid.png"
    argv = ["compare-steps", "a red fox", "--model", "tiny", "--seed", "42", "--size", "256", "--steps", "2,5",
            "--scheduler", "DPM++ 2M Karras", "--stop-early"]  # fmt: skip
    assert main([*argv, "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Stopped early vs fewer steps: the 5-step run's x0, stopped at each step count, differs from an honest " \
           "run of that many steps by 2 steps Δ " in printed  # fmt: skip
    grid = Image.open(out)
    assert grid.width > 2 * 256 and grid.height > 2 * 256 + 3 * 28
    assert (png_parameters(out.read_bytes()) or "").endswith("Stop early: True")


@pytest.mark.slow
def test_compare_steps_with_seeds_writes_a_row_per_seed_and_says_where_they_settle(
    tmp_path: Path, model_cache_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STEPGRID_MODEL_CACHE_DIR", str(model_cache_dir))
    out = tmp_path / "grid.png"
    argv = ["compare-steps", "a red fox", "--model", "tiny", "--seed", "42", "--size", "256", "--steps", "2,4",
            "--scheduler", "Euler", "--seeds", "3"]  # fmt: skip
    assert main([*argv, "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Euler, steps 2,4, seed 42,43,44," in printed  # every row's seed, for /imagine
    assert "Over seeds 42–44, Euler " in printed and " seeds" in printed.splitlines()[-1]
    grid = Image.open(out)
    assert grid.width > 2 * 256 and grid.height > 3 * 256
    assert (png_parameters(out.read_bytes()) or "").endswith('Y Type: Seed, Y Values: "42, 43, 44"')


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        (["--seeds", "7"], "seeds must be 2 to 6 (a row per seed); got 7."),
        (["--seeds", "3", "--stop-early"], "Choose one of seeds and stop_early: each draws rows of its own."),
        (["--seeds", "5", "--steps", "5,10,20"], "5 seeds × 3 step counts would be 15: give fewer of either."),
    ],
)
def test_seeds_that_cant_make_a_grid_are_refused_before_a_worker_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], problem: str
) -> None:
    assert main(["compare-steps", "fox", *extra, "-o", str(tmp_path / "g.png")]) == 2
    err = capsys.readouterr().err
    assert problem in err and err.count("\n") == 1

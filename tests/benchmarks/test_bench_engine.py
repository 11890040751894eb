"""Smoke test of the benchmark script on CPU with the tiny model: it runs and prints every figure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import bench_admission
from benchmarks.bench_engine import interleaved, main
from inference.requests import FEW_STEP_SCHEDULERS, SCHEDULER_NAMES

pytestmark = pytest.mark.slow


def test_the_benchmark_runs_on_cpu_and_reports_every_figure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "figures.json"
    args = [
        "--steps",
        "3",
        "--compare",
        "2,4",
        "--concurrent",
        "2",
        "--repeats",
        "1",
        "--pairs",
        "2",
        "--grid-schedulers",
        "Euler a,DDIM",
        "--grid-steps",
        "1,2",
        "--cache-dir",
        str(tmp_path),
        "--out",
        str(out),
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    for phrase in ("compare-steps (2, 4): batched", "compare-schedulers Euler a, DDIM × (1, 2) (4 cells): batched",
                   "2 concurrent 3-step imagine jobs",
                   "plain pipeline", "PSNR engine vs plain pipeline"):  # fmt: skip
        assert phrase in printed
    figures = json.loads(out.read_text())["figures"]
    assert figures["compare_speedup"] > 0 and figures["concurrent_speedup"] > 0
    assert figures["single_engine_vs_plain"] > 0
    assert figures["scheduler_grid_speedup"] > 0
    assert figures["psnr_db"] > 40, "in fp32 the engine's image must equal the plain pipeline's"
    assert figures["single_engine_vs_plain_png"] > 0
    for key in ("compare", "scheduler_grid", "concurrent"):
        # the denoiser and the VAE decoder run inside each figure, for part of its time
        assert 0 < figures[f"{key}_networks_batched_s"] < figures[f"{key}_batched_s"]
        assert figures[f"{key}_networks_bound"] > 0
    assert "with no host time at all" in printed


def test_the_family_benchmark_gives_a_row_per_family_with_every_ratio(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "families.json"
    args = ["--families", "tiny-sdxl,tiny-flux,tiny-sd3", "--size", "64", "--steps", "2", "--compare", "1,2",
            "--repeats", "1", "--pairs", "1", "--cache-dir", str(tmp_path), "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "| tiny-sdxl | sdxl |" in printed and "| tiny-flux | flux |" in printed and "| tiny-sd3 | sd3 |" in printed
    payload = json.loads(out.read_text())
    assert payload["device"] and set(payload["rows"]) == {"tiny-sdxl", "tiny-flux", "tiny-sd3"}
    for row in payload["rows"].values():
        assert row["compare_speedup"] > 0 and row["single_engine_vs_plain"] > 0 and row["compare_engine_vs_plain"] > 0
        assert row["psnr_db"] > 40, "in fp32 the engine's image must equal the family's plain pipeline's"


def test_the_overhead_mode_reports_every_scheduler_and_lane_count_with_one_message_per_iteration(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "overhead.json"
    args = ["--overhead", "--sizes", "64", "--lanes", "1,3", "--repeats", "1", "--iterations", "2", "--threads", "0",
            "--cache-dir", str(tmp_path), "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    assert "| Euler a | 64² | 3 |" in capsys.readouterr().out
    rows = json.loads(out.read_text())["rows"]
    assert set(rows) == {f"{name}@{lanes}@64" for name in ("Euler", "DPM++ 2M Karras", "Euler a") for lanes in (1, 3)}
    for key, row in rows.items():
        jobs = int(key.split("@")[1])
        assert row["lane_step_us"] > 0 and row["bytes_per_iteration"] > 0
        assert row["messages_per_iteration"] == 1, "one progress message per engine iteration, however many jobs"
        assert row["progress_per_iteration"] == jobs, "in it, one progress event per job"


def test_the_one_image_figure_times_both_paths_back_to_back_in_alternating_order() -> None:
    calls: list[str] = []
    ours, theirs, ratio = interleaved(lambda: calls.append("ours"), lambda: calls.append("theirs"), 3)
    assert calls == ["ours", "theirs", "theirs", "ours", "ours", "theirs"]
    assert ours > 0 and theirs > 0 and ratio > 0


def test_the_admission_benchmark_reports_every_scheduler_of_the_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "admission.json"
    args = ["--steps", "2", "--size", "64", "--repeats", "1", "--cache-dir", str(tmp_path), "--out", str(out)]
    assert bench_admission.main(args) == 0
    rows = json.loads(out.read_text())["ms"]
    # The tiny SD model offers every scheduler but LCM and TCD, which are for few-step distills.
    assert list(rows) == [name for name in SCHEDULER_NAMES if name not in FEW_STEP_SCHEDULERS]
    assert all(ms > 0 for row in rows.values() for ms in row.values())
    assert "| DPM2 |" in capsys.readouterr().out

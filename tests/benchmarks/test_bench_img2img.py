"""Smoke test of the img2img benchmark on CPU with the tiny model: it runs, reports every figure, and its
engine image equals diffusers' img2img pipeline's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.bench_img2img import main

pytestmark = pytest.mark.slow


def test_the_img2img_benchmark_runs_on_cpu_and_reports_every_figure(
    tmp_path: Path, model_cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "figures.json"
    # 4 steps: the weakest strength, 0.3, runs one of them (SD rounds steps × strength down).
    args = ["--steps", "4", "--lanes", "2", "--pairs", "1", "--cache-dir", str(model_cache_dir), "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    for phrase in ("2 img2img jobs", "1 img2img + 1 text-to-image jobs", "compare-strength 0.3, 0.45, 0.6, 0.75, 0.9"):
        assert phrase in printed
    figures = json.loads(out.read_text())["figures"]
    assert figures["psnr_db"] > 40, "in fp32 the engine's img2img image must equal the plain pipeline's"
    for key in ("img2img_mix_speedup", "mixed_txt2img_speedup", "strength_grid_speedup"):
        assert figures[key] > 0

"""The LoRA switch benchmark's dry run: one round on the tiny SD model gives every figure."""

from __future__ import annotations

from pathlib import Path

from benchmarks.bench_lora_switch import measure


def test_the_lora_switch_benchmark_measures_every_figure(tmp_path: Path, model_cache_dir: Path) -> None:
    figures = measure("tiny", tmp_path / "loras", model_cache_dir, 64, 1)
    assert set(figures) == {
        "denoiser_call_s",
        "switch_between_loras_vs_call",
        "switch_from_no_lora_vs_call",
        "switch_to_no_lora_vs_call",
        "call_with_lora_vs_call_without",
        "reload_from_file_vs_call",
    }
    assert all(value > 0 for value in figures.values())

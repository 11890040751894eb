"""Smoke test of the distribution benchmark: it runs against a real redis-server and reports every figure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.bench_redis import main

pytestmark = pytest.mark.slow


def test_the_distribution_benchmark_reports_throughput_per_agent_count_and_latency(tmp_path: Path) -> None:
    out = tmp_path / "redis.json"
    argv = ["--agents", "1,2", "--steps", "3", "--step-seconds", "0.01", "--jobs-per-agent", "2"]
    assert main([*argv, "--latency-jobs", "2", "--out", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert set(figures["agents"]) == {"1", "2"}
    assert figures["agents"]["1"]["ratio_to_one"] == 1.0
    assert {"local_pipe_median_seconds", "redis_median_seconds", "redis_added_ms"} <= set(figures["latency"])

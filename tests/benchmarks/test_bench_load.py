"""Smoke test of the load benchmark: a few seconds of it, the bot in its own process on four shards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.bench_load import main

pytestmark = pytest.mark.slow


def test_the_load_benchmark_answers_every_interaction_once_and_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    argv = ["--guilds", "40", "--rate", "5", "--seconds", "2", "--databases", "sqlite", "--out", str(out)]
    assert main(argv) == 0  # none late, lost or doubled
    run = json.loads(out.read_text())["runs"]["sqlite"]
    assert run["interactions"] == 10 and run["acknowledged_within_3s"] == 10
    assert (run["lost"], run["refused"], run["doubled"], run["unknown_routes"]) == (0, 0, 0, [])
    for figure in ("ack_ms", "event_loop_lag_ms", "database_write_ms"):
        assert {"count", "p50", "p99", "max"} <= set(run[figure]), figure
    assert len(run["load_average_before"]) == len(run["load_average_after"]) == 3  # the machine's, with the figures

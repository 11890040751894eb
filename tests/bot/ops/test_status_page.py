"""The status page's HTML: every column named, the current hour labelled, sub-second waits visible."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from bot.ops.http import _running_status
from bot.ops.status_page import HourFigures, JobLine, ModelLine, ShardLine, StatusView, last_hours, status_html
from inference.queues.base import WorkerStatus

NOW = datetime(2026, 12, 7, 17, 40, tzinfo=UTC)


def view(**changes: object) -> StatusView:
    hours = last_hours(NOW, {NOW.replace(minute=0): HourFigures(NOW.replace(minute=0), 3, 90, 0.04)})
    fields: dict[str, object] = {
        "now": NOW,
        "discord": "connected",
        "ready": True,
        "models": [ModelLine("tiny", "ready", "sd · 30 steps")],
        "workers": [WorkerStatus("local worker pid 7", "ready", "cpu", ("tiny",), "float32, loaded in 1.0s")],
        "jobs": [JobLine("abcdef123456", "imagine", "tiny", "running · step 3/10", "guild", NOW, "a fox")],
        "hours": hours,
    }
    fields.update(changes)
    return StatusView(**fields)  # type: ignore[arg-type]


def test_every_table_column_has_a_header() -> None:
    page = status_html(view())
    assert "<th></th>" not in page
    assert page.count("<th>detail</th>") == 2


def test_the_current_hour_is_labelled_on_the_hour_axis() -> None:
    page = status_html(view())
    labels = re.findall(r'class="tick" text-anchor="middle">(\d\d:00)</text>', page)
    assert f"{NOW:%H}:00" in labels


def test_waits_under_a_second_still_draw_a_bar() -> None:
    page = status_html(view())
    wait_chart = page[page.index("Mean wait for the GPU") :]
    heights = [float(h) for h in re.findall(r'<rect [^>]*height="([\d.]+)"', wait_chart)]
    assert max(heights) > 0


def test_a_running_job_shows_its_steps_once_known() -> None:
    assert _running_status("running", (3, 10)) == "running · step 3/10"
    assert _running_status("running", None) == "running"
    assert _running_status("delivering", (10, 10)) == "delivering"


def test_each_shard_of_the_process_shows_its_state_latency_and_servers() -> None:
    page = status_html(view(shards=[ShardLine(0, "connected", 0.0412, 1250), ShardLine(1, "closed", float("inf"), 3)]))
    assert "<h2>Shards (2)</h2>" in page
    assert "<td>0</td>" in page and ">connected<" in page and "<td>41 ms</td>" in page and "<td>1,250</td>" in page
    assert ">closed<" in page and "<td>not measured yet</td>" in page

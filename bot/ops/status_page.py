"""The operator's status page: one server-rendered HTML page, charts as inline SVG, no build step.

Pure functions of a `StatusView`; `bot.ops.http` gathers the view. Everything shown is escaped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from html import escape

from inference.queues.base import WorkerStatus

CHART_WIDTH, CHART_HEIGHT = 720, 180
HOURS = 24


@dataclass(frozen=True)
class JobLine:
    """A queued or running job."""

    job_id: str
    command: str
    model: str
    status: str  # "queued (3rd)", "running", …
    server: str
    accepted_at: datetime
    prompt: str | None  # None: hidden (STEPGRID_STATUS_SHOW_PROMPTS is off)


@dataclass(frozen=True)
class ModelLine:
    name: str
    state: str  # "ready" or "unavailable"
    detail: str


@dataclass(frozen=True)
class HourFigures:
    """One hour of the last 24: jobs accepted, steps run, mean wait in seconds (None: no job started)."""

    hour: datetime
    jobs: int
    steps: int
    mean_wait: float | None


@dataclass(frozen=True)
class ShardLine:
    """A gateway shard this process runs."""

    shard_id: int
    state: str  # "connected" or "closed"
    latency: float  # seconds; inf before the first heartbeat is acknowledged
    servers: int


@dataclass(frozen=True)
class StatusView:
    now: datetime
    discord: str
    ready: bool
    models: Sequence[ModelLine]
    workers: Sequence[WorkerStatus]
    jobs: Sequence[JobLine]
    hours: Sequence[HourFigures]  # oldest first, HOURS of them
    images_withheld: int = 0  # flagged pictures not posted in their channel, last 24 hours
    shards: Sequence[ShardLine] = ()  # the gateway shards this process runs


def last_hours(now: datetime, known: dict[datetime, HourFigures]) -> list[HourFigures]:
    """The HOURS hours up to and including now's, oldest first; hours without jobs are zeros."""
    current = now.replace(minute=0, second=0, microsecond=0)
    hours = [current - timedelta(hours=back) for back in range(HOURS - 1, -1, -1)]
    return [known.get(hour) or HourFigures(hour, 0, 0, None) for hour in hours]


def bar_chart(title: str, values: Sequence[float], hours: Sequence[datetime], unit: str) -> str:
    """An SVG bar chart of one value per hour, each bar titled with its hour and value."""
    left, bottom, top = 48, CHART_HEIGHT - 22, 10
    top_value = max(values, default=0) or 1
    slot = (CHART_WIDTH - left - 8) / max(1, len(values))
    parts = [
        f'<svg class="chart" role="img" aria-label="{escape(title)}" viewBox="0 0 {CHART_WIDTH} {CHART_HEIGHT}" '
        f'width="{CHART_WIDTH}" height="{CHART_HEIGHT}">',
        f'<line x1="{left}" y1="{bottom}" x2="{CHART_WIDTH - 8}" y2="{bottom}" class="axis"/>',
        f'<text x="{left - 6}" y="{top + 10}" class="tick" text-anchor="end">{top_value:.3g}</text>',
        f'<text x="{left - 6}" y="{bottom}" class="tick" text-anchor="end">0</text>',
    ]
    for index, (value, hour) in enumerate(zip(values, hours, strict=True)):
        height = (bottom - top) * value / top_value
        x = left + index * slot + slot * 0.15
        parts.append(
            f'<rect x="{x:.1f}" y="{bottom - height:.1f}" width="{slot * 0.7:.1f}" height="{height:.1f}">'
            f"<title>{hour:%H:00} UTC: {value:.3g} {escape(unit)}</title></rect>"
        )
        if (len(values) - 1 - index) % 6 == 0:  # counted from the current hour, which always has its label
            parts.append(f'<text x="{x + slot * 0.35:.1f}" y="{CHART_HEIGHT - 6}" class="tick" '
                         f'text-anchor="middle">{hour:%H:00}</text>')  # fmt: skip
    parts.append("</svg>")
    return "".join(parts)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], empty: str) -> str:
    if not rows:
        return f'<p class="empty">{escape(empty)}</p>'
    head = "".join(f"<th>{escape(header)}</th>" for header in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _time(moment: datetime) -> str:
    return f'<time datetime="{moment.isoformat()}">{moment:%Y-%m-%d %H:%M} UTC</time>'


STYLE = """
body{font:15px/1.4 system-ui,sans-serif;margin:2em auto;max-width:780px;padding:0 1em;background:#111214;color:#ecedef}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.25em .5em;border-bottom:1px solid #333}
.ready{color:#57f287}.not-ready,.failed,.unavailable,.unusable{color:#ed4245}.loading,.restarting{color:#fee75c}
svg.chart rect{fill:#5865f2}svg.chart .axis{stroke:#555}svg.chart .tick{fill:#a0a4ab;font-size:11px}
.empty,.muted{color:#a0a4ab}
"""

# Shows times in the reader's own time zone, and marks the page as rendered (what the browser test checks).
SCRIPT = """
for (const t of document.querySelectorAll("time[datetime]")) {
  t.title = t.textContent;
  t.textContent = new Date(t.getAttribute("datetime")).toLocaleString();
}
document.documentElement.dataset.rendered = document.querySelectorAll("svg.chart").length;
"""


def status_html(view: StatusView) -> str:
    """The whole page."""
    state = '<span class="ready">ready</span>' if view.ready else '<span class="not-ready">not ready</span>'
    jobs = _table(
        ("job", "command", "model", "status", "server", "accepted", "prompt"),
        [
            (
                f"<code>{escape(job.job_id[:8])}</code>",
                escape(job.command),
                escape(job.model),
                escape(job.status),
                escape(job.server),
                _time(job.accepted_at),
                escape(job.prompt) if job.prompt is not None else '<span class="muted">hidden</span>',
            )
            for job in view.jobs
        ],
        "Nothing queued or running.",
    )
    models = _table(
        ("model", "state", "detail"),
        [(escape(m.name), f'<span class="{m.state}">{m.state}</span>', escape(m.detail)) for m in view.models],
        "No model loaded yet.",
    )
    workers = _table(
        ("worker", "state", "device", "models", "restarts", "detail"),
        [
            (
                escape(w.name),
                f'<span class="{escape(w.state)}">{escape(w.state)}</span>',
                escape(w.device),
                escape(", ".join(w.models)),
                str(w.restarts),
                escape(w.detail),
            )
            for w in view.workers
        ],
        "No worker yet.",
    )
    shards = _table(
        ("shard", "state", "latency", "servers"),
        [
            (
                str(s.shard_id),
                f'<span class="{"ready" if s.state == "connected" else "not-ready"}">{escape(s.state)}</span>',
                f"{s.latency * 1000:.0f} ms" if math.isfinite(s.latency) else "not measured yet",
                f"{s.servers:,}",
            )
            for s in view.shards
        ],
        "Not connected to Discord yet.",
    )
    hours = [figures.hour for figures in view.hours]
    charts = "".join(
        f"<h3>{escape(title)}</h3>{bar_chart(title, values, hours, unit)}"
        for title, values, unit in (
            ("Jobs per hour", [figures.jobs for figures in view.hours], "jobs"),
            ("Steps per hour", [figures.steps for figures in view.hours], "steps"),
            # Unrounded: waits under a second are the usual case and must still show as bars.
            ("Mean wait for the GPU (s)", [f.mean_wait or 0.0 for f in view.hours], "s"),
        )
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        '<meta http-equiv="refresh" content="30"><title>Stepgrid status</title>'
        f"<style>{STYLE}</style></head><body>"
        f"<h1>Stepgrid: {state}</h1><p>{escape(view.discord)} · {_time(view.now)}</p>"
        f"<h2>Queued and running ({len(view.jobs)})</h2>{jobs}"
        f"<h2>Models</h2>{models}<h2>Workers</h2>{workers}<h2>Shards ({len(view.shards)})</h2>{shards}"
        f"<h2>Last 24 hours (hours in UTC)</h2>"
        f"<p>Pictures withheld (flagged by the image checker): {view.images_withheld:,}</p>{charts}"
        f"<script>{SCRIPT}</script></body></html>"
    )

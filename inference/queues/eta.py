"""Honest ETAs: when a queued job starts and how long a running one has left, from measured rates.

The worker measures what an engine iteration takes (`inference.engine.rates`, the true timings) and
sends the rate with its progress events; this side only keeps the latest rate per (model, size, lanes
in the batch, device) and adds them up. A forecast replays what the engine will do: the running jobs'
remaining steps and then the waiting jobs in the queue's fair order, admitted as the batch has room,
one batched iteration at a time at the rate of its lane count (a batched step costs per batch, so the
other lanes in a job's batch matter). No rate for a model, size and device: no ETA (nothing is
guessed). Rates live in the bot's memory and are learned again after a restart.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from inference.protocol import StepRate

# A second-order scheduler calls the denoiser twice per step.
CALLS_PER_STEP = {"Heun": 2, "DPM2": 2, "DPM2 a": 2}
MAX_ITERATIONS = 100_000  # a forecast that would replay more says nothing about the jobs beyond


@dataclass(frozen=True)
class Eta:
    """A job's ETA in seconds from now: `starts_in` while it waits, `left` until its answer."""

    left: float
    starts_in: float | None = None


def rounded_seconds(seconds: float) -> int:
    """Seconds rounded as people read an estimate: 7, 12, 40, 120 (2 min), 1500 (25 min), 4800 (1 h 20 min)."""
    if seconds < 20:
        return max(1, round(seconds))
    if seconds < 60:
        return min(60, 5 * round(seconds / 5))
    if seconds < 3600:
        step = 60 if seconds < 600 else 300
        return min(3600, step * round(seconds / step))
    return 600 * round(seconds / 600)


class RateBook:
    """The latest measured rate per (model, width, height, lanes, device)."""

    def __init__(self) -> None:
        self._seconds: dict[tuple[str, int, int, str], dict[int, float]] = {}
        self._device: dict[str, str] = {}  # per model, the device that last reported a rate for it

    def record(self, rate: StepRate) -> bool:
        """Keep a rate the worker measured; True when it is the first for its key (new jobs may be priced now)."""
        if rate.lanes < 1 or not math.isfinite(rate.seconds) or rate.seconds <= 0:
            return False
        known = self._seconds.setdefault((rate.model, rate.width, rate.height, rate.device), {})
        new = rate.lanes not in known or self._device.get(rate.model) != rate.device
        known[rate.lanes] = rate.seconds
        self._device[rate.model] = rate.device
        return new

    def device_of(self, model: str) -> str | None:
        """The device that last ran `model`, or None if none has reported."""
        return self._device.get(model)

    def seconds(self, model: str, width: int, height: int, lanes: int, device: str | None = None) -> float | None:
        """Seconds one iteration of `lanes` lanes takes: measured for that lane count, else bounded from
        the nearest measured ones of the same model, size and device (between two: on the line through
        them; above the largest: as if batching saved nothing; below the smallest: the smallest's cost).
        None when this model, size and device have no measurement at all."""
        device = device or self._device.get(model)
        known = self._seconds.get((model, width, height, device or ""))
        if not known:
            return None
        if lanes in known:
            return known[lanes]
        below = [count for count in known if count < lanes]
        above = [count for count in known if count > lanes]
        if below and above:
            low, high = max(below), min(above)
            return known[low] + (known[high] - known[low]) * (lanes - low) / (high - low)
        if below:
            low = max(below)
            return known[low] * lanes / low
        return known[min(above)]


@dataclass(eq=False)
class Work:
    """A job as the forecast sees it: its group, and per lane the denoiser calls left."""

    job_id: str
    model: str
    width: int
    height: int
    calls_left: list[int]
    started: list[bool]
    device: str | None = None
    alone: bool = False  # a retried job runs alone
    lane_count: int = field(init=False)

    def __post_init__(self) -> None:
        self.lane_count = len(self.calls_left)

    @property
    def done(self) -> bool:
        return all(calls <= 0 for calls in self.calls_left)

    def due(self) -> list[int]:
        """The lanes the engine runs now: all of a job's cells finish together, so a shorter lane starts
        once the longest started one has as many calls left as it needs (`EngineJob.due_lanes`)."""
        left = [i for i, calls in enumerate(self.calls_left) if calls > 0]
        started = [i for i in left if self.started[i]]
        clock = max(self.calls_left[i] for i in started or left)
        due = [i for i in left if self.started[i] or self.calls_left[i] >= clock]
        return sorted(due, key=lambda i: -self.calls_left[i])


def calls_left(steps_run: Sequence[int], schedulers: Sequence[str], done: dict[int, int]) -> list[int]:
    """Denoiser calls each lane has left, from the steps it runs and the steps its progress reported."""
    return [
        max(0, steps - done.get(lane, 0)) * CALLS_PER_STEP.get(scheduler, 1)
        for lane, (steps, scheduler) in enumerate(zip(steps_run, schedulers, strict=True))
    ]


def forecast(
    running: Sequence[Work], waiting: Sequence[Work], book: RateBook, *, lanes_cap: int, engines: int = 1
) -> dict[str, tuple[float | None, float]]:
    """(start, finish) in seconds from now of every job whose work can be priced, the running ones
    (start None) and the waiting ones in order; a job after one that can't be priced gets none.
    `engines` workers share the batch evenly (the Redis fleet: a rough figure, said so where shown)."""
    active = [_copy(work) for work in running]
    queue = [_copy(work) for work in waiting]
    starts: dict[str, float | None] = {work.job_id: None for work in active}
    result: dict[str, tuple[float | None, float]] = {}
    clock = 0.0

    def admit() -> None:
        while queue:
            head = queue[0]
            busy = sum(work.lane_count for work in active)
            if active and (head.alone or any(w.alone for w in active) or busy + head.lane_count > lanes_cap):
                return
            active.append(queue.pop(0))
            starts[head.job_id] = clock

    def settle() -> None:
        for work in [work for work in active if work.done]:
            result[work.job_id] = (starts[work.job_id], clock)
            active.remove(work)

    settle()
    admit()
    for turn in range(MAX_ITERATIONS):
        if not active:
            break
        groups: dict[tuple[str, int, int], list[tuple[Work, int]]] = {}
        for work in active:
            for lane in work.due():
                groups.setdefault((work.model, work.width, work.height), []).append((work, lane))
        key = sorted(groups)[turn % len(groups)]  # groups take turns, as in the engine
        batch = groups[key][:lanes_cap]
        per_engine = math.ceil(len(batch) / max(1, engines))
        cost = book.seconds(*key, per_engine, batch[0][0].device)
        if cost is None:
            break
        clock += cost
        for work, lane in batch:
            work.calls_left[lane] -= 1
            work.started[lane] = True
        settle()
        admit()
    return result


def _copy(work: Work) -> Work:
    return Work(
        work.job_id,
        work.model,
        work.width,
        work.height,
        list(work.calls_left),
        list(work.started),
        work.device,
        work.alone,
    )

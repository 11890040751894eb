"""What an engine iteration takes, measured while serving: the rates the bot's ETAs are made from.

An iteration's time is the wall time from its start to the next iteration's start (on a GPU the host
runs ahead until the device's queue is full, so over a few iterations that is the device's pace, and
on a CPU it is the work itself). It is kept per (model, width, height, lanes in the batch): a batched
step costs per batch, not per lane. Only steady iterations count: not the first call of a shape
(kernel selection, allocation), not one in which lanes started from an image or finished (VAE
encode, decode and PNG are no step's cost). Kept in the worker's memory: a restarted worker learns
again from its first steady iterations.
"""

from __future__ import annotations

import statistics
from collections import deque

from inference.protocol import StepRate

SAMPLES_KEPT = 15  # the mean of the latest: regular slow iterations (previews, film decodes) are real cost

RateShape = tuple[str, int, int, int]  # model, width, height, lanes


class IterationRates:
    """Seconds per iteration by shape, from the periods between steady iterations."""

    def __init__(self, device: str) -> None:
        self.device = device
        self._samples: dict[RateShape, deque[float]] = {}
        self._seen: set[RateShape] = set()
        self._open: tuple[RateShape, float] | None = None  # a steady iteration whose end is not known yet

    def iteration_started(self, now: float) -> None:
        """A new iteration begins: the open one (if any) took until now."""
        if self._open is not None:
            shape, started = self._open
            self._samples.setdefault(shape, deque(maxlen=SAMPLES_KEPT)).append(now - started)
            self._open = None

    def iteration_ran(self, shape: RateShape, started: float, *, steady: bool) -> None:
        """The iteration that began at `started` ran `shape`; `steady`: nothing in it started or finished."""
        first = shape not in self._seen
        self._seen.add(shape)
        self._open = (shape, started) if steady and not first else None

    def idle(self) -> None:
        """The engine ran out of lanes: the time until its next iteration is no iteration's."""
        self._open = None

    def rate(self, shape: RateShape) -> StepRate | None:
        """The mean of `shape`'s latest periods, or None before its first steady iteration has ended."""
        samples = self._samples.get(shape)
        if not samples:
            return None
        model, width, height, lanes = shape
        return StepRate(model, width, height, lanes, statistics.fmean(samples), self.device)

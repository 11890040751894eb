"""What a lane costs: the batched calls it took part in, timed and shared by rows, first calls of a shape
charged at the rate of the shape's next call."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch

from inference.engine.lanes import Lane
from inference.models.adapters import AdapterKey

T = TypeVar("T")

# One batched call's shape: what it ran, the lanes' group (model, LoRAs, size), lanes and rows.
CallShape = tuple[str, tuple[str, AdapterKey, int, int], int, int]


CallCost = float | tuple[Any, Any]  # CPU seconds, or the CUDA events around the call


def _charge(lane: Lane, cost: CallCost, share: float) -> None:
    """Add `share` of a call's cost to what the lane cost."""
    if isinstance(cost, tuple):
        lane.gpu_spans.append((cost[0], cost[1], share))
    else:
        lane.cpu_seconds += cost * share


class CallCosts:
    """What each lane costs: every batched call timed (CUDA events on a GPU, the clock on a CPU) and shared
    among its lanes by the rows each adds; the first call of a shape charged at the rate of its next one.
    The engine (`LaneEngine`) sets the attributes below."""

    _cuda: bool
    _clock: Callable[[], float]
    _shapes_run: set[CallShape]
    _first_calls: dict[CallShape, tuple[CallCost, list[tuple[Lane, float]]]]

    def _timed(self, lanes: list[Lane], work: Callable[[list[Lane]], T], what: str) -> T:
        """Run `work` on a batch of lanes and charge each lane its share of the time, by the rows it
        adds to the batch (CUDA events: no host sync). A job's time is the sum of its lanes'.

        The first call of a shape (`what` on this group and batch) also pays one-off costs: kernel
        selection, memory growing, lazy set-up. Charged to the lanes in it, they would land on the
        longest cell of a cold grid, alone in the first iterations ("50 steps · 20.4s" beside
        "40 steps · 3.1s"), so its lanes are charged at the rate of the same shape's next call, or at
        their own call's if they finish before there is one (`_settle_first_calls`)."""
        rows = sum(lane.rows for lane in lanes)
        cost: CallCost
        if self._cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = work(lanes)
            end.record()
            cost = (start, end)
        else:
            started = self._clock()
            out = work(lanes)
            cost = self._clock() - started
        shares = [(lane, lane.rows / rows) for lane in lanes]
        shape = (what, lanes[0].job.group, len(lanes), rows)
        if shape not in self._shapes_run:
            self._shapes_run.add(shape)
            self._first_calls[shape] = (cost, shares)
            return out
        _, waiting = self._first_calls.pop(shape, (cost, []))
        for lane, share in [*waiting, *shares]:
            _charge(lane, cost, share)
        return out

    def _settle_first_calls(self, lanes: list[Lane]) -> None:
        """Lanes that finish while a first call they were in has had no second: charged that call's own time."""
        done = set(map(id, lanes))
        for shape, (cost, shares) in list(self._first_calls.items()):
            for lane, share in shares:
                if id(lane) in done:
                    _charge(lane, cost, share)
            left = [(lane, share) for lane, share in shares if id(lane) not in done]
            if left:
                self._first_calls[shape] = (cost, left)
            else:
                del self._first_calls[shape]

"""Helpers for engine tests: an engine that records each lane's final latents, and lane runs alone."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from inference.engine.lane_engine import LaneEngine
from inference.engine.lanes import Lane
from inference.models.loading import LoadedModel
from inference.protocol import JobEvent, JobResult
from inference.requests import Request

ENCODER = ThreadPoolExecutor(max_workers=2, thread_name_prefix="test-png")  # shared: engines come and go


class RecordingEngine(LaneEngine):
    """The real engine, also keeping each lane's final latents and the size of each denoiser batch."""

    def __init__(self, models: LoadedModel | list[LoadedModel], **kwargs: Any) -> None:
        self.events: list[JobEvent] = []
        kwargs = {"max_batch_lanes": 16, "previews": False, "encoder": ENCODER, **kwargs}
        super().__init__(models, self.events.append, **kwargs)
        self.final_latents: dict[tuple[str, int], torch.Tensor] = {}
        self.batch_sizes: list[int] = []
        self.batch_models: list[str] = []

    def _denoise(self, lanes: list[Lane]) -> None:
        self.batch_sizes.append(len(lanes))
        self.batch_models.append(lanes[0].job.model.name)
        assert len({lane.job.group for lane in lanes}) == 1, "one model and size per batch"
        super()._denoise(lanes)

    def _finish(self, lanes: list[Lane]) -> None:
        for lane in lanes:
            self.final_latents[(lane.job.job_id, lane.index)] = lane.latents.clone()
        super()._finish(lanes)

    def result(self, job_id: str) -> JobResult:
        return next(e for e in self.events if isinstance(e, JobResult) and e.job_id == job_id)


def run_alone(model: LoadedModel, request: Request, index: int = 0) -> torch.Tensor:
    """One lane's final latents from a job run by itself, one lane per denoiser call."""
    engine = RecordingEngine(model)
    engine.add_job("alone", request)
    engine.run_until_idle()
    assert set(engine.batch_sizes) == {1}
    return engine.final_latents[("alone", index)]


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())

"""The compiled denoiser's buckets: a batch padded up to its bucket (the compiler left out) gives each lane its run
alone, and another size runs eagerly."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from inference.models.loading import LoadedModel
from inference.requests import GenerateRequest
from tests.inference.conftest import LoadTestModel
from tests.inference.lanes import RecordingEngine, relative_error, run_alone

SIZE = 256


@pytest.fixture(scope="module")
def tiny(load_test_model: LoadTestModel) -> LoadedModel:
    return load_test_model("tiny")


def test_batches_padded_to_compiled_buckets_give_the_same_lanes(tiny: LoadedModel) -> None:
    """The bucketing and padding around a compiled UNet, with the compiler left out (it takes
    minutes on CPU): a batch of 3 runs as 4 rows and each lane still equals its run alone."""
    engine = RecordingEngine(tiny)
    engine.max_batch_lanes = 4
    engine.batch_buckets = (1, 2, 4)
    rows_seen: list[int] = []

    def recording_compiler(unet: Any) -> Any:
        def call(sample: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            rows_seen.append(sample.shape[0] // 2)
            return unet(sample, *args, **kwargs)

        return call

    engine.compile_unet(SIZE, SIZE, compiler=recording_compiler)
    assert rows_seen == [1, 1, 1, 2, 2, 2, 4, 4, 4], "warm-up runs every bucket"
    rows_seen.clear()
    requests = [
        GenerateRequest("fox", steps=3, scheduler="DPM++ 2M", seed=i, width=SIZE, height=SIZE) for i in range(3)
    ]
    for i, request in enumerate(requests):
        engine.add_job(f"job-{i}", request)
    engine.add_job("other-size", GenerateRequest("fox", steps=3, width=SIZE + 64, height=SIZE))
    engine.run_until_idle()
    assert rows_seen == [4, 4, 4], "3 lanes padded to the 4-lane bucket; the other size runs eagerly"
    for i, request in enumerate(requests):
        assert relative_error(engine.final_latents[(f"job-{i}", 0)], run_alone(tiny, request)) <= 1e-4

"""What every family shares: classifier-free guidance over a batch where only some lanes are guided, the
VAE's pixels as uint8, and which family runs a pipeline. Each family's own behaviour is tested against its
diffusers pipeline in test_<family>.py beside this module."""

from __future__ import annotations

from typing import Any, cast

import pytest
import torch

from inference.families import Conditioning, DenoiserBatch, family_for, guided_rows, supported_pipelines, to_uint8
from inference.registry import ModelSpec


def conditioning(guidance: float | None) -> Conditioning:
    """A lane's conditioning: guided at `guidance`, or None for one row (no CFG)."""
    rows = {"prompt_embeds": torch.zeros(1)}
    return Conditioning(rows, rows if guidance is not None else None, torch.tensor([guidance or 0.0]))


def test_the_guided_lanes_are_those_with_an_unconditional_row() -> None:
    batch = DenoiserBatch([], [], [conditioning(7.5), conditioning(None), conditioning(3.0)], rows=3)
    assert batch.guided == [0, 2]


def test_every_lane_guided_is_uncond_plus_scale_times_the_difference() -> None:
    uncond, cond = torch.tensor([[1.0], [2.0]]), torch.tensor([[3.0], [2.5]])
    prediction = torch.cat([uncond, cond])
    combined = guided_rows(prediction, [0, 1], n=2, pad=0, conditionings=[conditioning(2.0), conditioning(4.0)])
    assert combined.tolist() == [[5.0], [4.0]]


def test_an_unguided_lane_keeps_its_cond_row_beside_guided_ones_and_padding_is_skipped() -> None:
    # [uncond of lane 1, one pad row, cond of lanes 0 and 1, one pad row]
    prediction = torch.tensor([[1.0], [99.0], [6.0], [3.0], [99.0]])
    combined = guided_rows(prediction, [1], n=2, pad=1, conditionings=[conditioning(None), conditioning(2.0)])
    assert combined.tolist() == [[6.0], [5.0]]


def test_no_guided_lane_is_the_cond_rows_alone() -> None:
    prediction = torch.tensor([[4.0], [5.0], [99.0]])
    assert guided_rows(prediction, [], n=2, pad=1, conditionings=[conditioning(None)] * 2).tolist() == [[4.0], [5.0]]


def test_vae_output_becomes_rounded_uint8_pixels_channels_last() -> None:
    decoded = torch.tensor([-1.0, 0.0, 1.0, 3.0]).view(1, 1, 2, 2).expand(1, 3, 2, 2)
    pixels = to_uint8(decoded)
    assert pixels.shape == (1, 2, 2, 3) and pixels.dtype.name == "uint8"
    assert pixels[0, :, :, 0].tolist() == [[0, 128], [255, 255]]  # 127.5 rounds as diffusers' processor


def test_a_pipeline_stepgrid_doesnt_run_is_a_lookup_error_and_the_supported_ones_are_named() -> None:
    class KandinskyPipeline:
        pass

    with pytest.raises(LookupError, match="KandinskyPipeline"):
        family_for(cast(Any, KandinskyPipeline()), ModelSpec("k", "k"), torch.device("cpu"), torch.float32)
    assert "StableDiffusionPipeline" in supported_pipelines() and "FluxPipeline" in supported_pipelines()

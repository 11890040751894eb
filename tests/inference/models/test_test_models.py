"""The tiny random-weight test models: built from configs, saved once, loaded through from_pretrained like any model;
and the benchmark's full-size random-weight architectures."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from inference.models.loading import load_model
from inference.models.test_models import build_test_pipeline
from tests.inference.conftest import LoadTestModel


def test_the_tiny_model_is_saved_once_and_loaded_through_from_pretrained(tmp_path: Path) -> None:
    first = load_model("tiny", cache_dir=tmp_path)
    [folder] = tmp_path.glob("tiny-random-weights-v*")
    assert (folder / "model_index.json").is_file() and (folder / "STEPGRID_TEST_MODEL.json").is_file()
    saved_at = (folder / "unet").stat().st_mtime_ns
    second = load_model("tiny", cache_dir=tmp_path)
    assert (folder / "unet").stat().st_mtime_ns == saved_at, "the saved model is reused, not rebuilt"
    for model in (first, second):
        assert model.is_test_model and type(model.pipe).__name__ == "StableDiffusionPipeline"
        assert model.dtype == torch.float32 and model.device.type == "cpu"
        assert model.pipe.tokenizer.model_max_length == 77
    weights = next(iter(first.pipe.unet.parameters()))
    assert torch.equal(weights, next(iter(second.pipe.unet.parameters()))), "same weights both times"


@pytest.mark.parametrize(
    ("name", "pipeline", "family"),
    [("tiny", "StableDiffusionPipeline", "sd"), ("tiny-sdxl", "StableDiffusionXLPipeline", "sdxl"),
     ("tiny-flux", "FluxPipeline", "flux"), ("tiny-flux-dev", "FluxPipeline", "flux"),
     ("tiny-sd3", "StableDiffusion3Pipeline", "sd3")],
)  # fmt: skip
def test_every_family_has_a_test_model_loaded_from_its_saved_folder(
    load_test_model: LoadTestModel, name: str, pipeline: str, family: str
) -> None:
    model = load_test_model(name)
    assert type(model.pipe).__name__ == pipeline
    assert model.info.family == family and model.info.name == name and model.info.is_test_model
    assert model.info.native_size == 256, "test models are meant for small images"


@pytest.mark.parametrize(
    ("name", "denoiser", "billions"), [("sdxl-arch", "unet", 2.567), ("flux-schnell-arch", "transformer", 11.891)]
)
def test_the_benchmark_architectures_have_the_real_models_sizes(name: str, denoiser: str, billions: float) -> None:
    """Built on the meta device (no memory): the GPU benchmark's random-weight SDXL and FLUX.1-schnell."""
    with torch.device("meta"):
        pipe = build_test_pipeline(name)
    parameters = sum(p.numel() for p in getattr(pipe, denoiser).parameters())
    assert parameters / 1e9 == pytest.approx(billions, abs=0.001)

"""Loading through from_pretrained: a registry where one model fails while the others load, and the one line
a model that can't load gets (no pipeline, a single-file checkpoint, a variant it lacks)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from inference.models.loading import ModelLoadError, load_model, load_models
from inference.models.test_models import ensure_test_model
from inference.protocol import WorkerConfig
from inference.registry import ModelSpec


def test_a_model_that_fails_to_load_is_reported_and_the_others_load(model_cache_dir: Path, tmp_path: Path) -> None:
    config = WorkerConfig(
        models=(
            ModelSpec(name="fast", source="tiny-flux"),
            ModelSpec(name="gone", source=str(tmp_path / "no-such-model")),
            ModelSpec(name="typo", source="tiny", scheduler="Eulr"),
            ModelSpec(name="sd", source="tiny"),
        ),
        cache_dir=str(model_cache_dir),
    )
    loaded, unavailable = load_models(config)
    assert [model.name for model in loaded] == ["fast", "sd"]
    assert [item.name for item in unavailable] == ["gone", "typo"]
    assert all("\n" not in item.message for item in unavailable)
    assert "Could not load model 'gone' from " in unavailable[0].message
    assert "scheduler 'Eulr' can't run on this sd model; choose one of: Euler, Euler a" in unavailable[1].message


def test_registry_defaults_override_the_familys(model_cache_dir: Path) -> None:
    spec = ModelSpec(name="quick", source="tiny", steps=8, scheduler="DPM++ 2M", guidance=4.0,
                     compare_steps=(2, 4, 8), max_steps=12)  # fmt: skip
    info = load_model(spec, cache_dir=model_cache_dir).info
    assert (info.name, info.default_steps, info.default_scheduler, info.default_guidance) == (
        "quick",
        8,
        "DPM++ 2M",
        4.0,
    )
    assert (info.compare_steps, info.max_steps) == ((2, 4, 8), 12)


@pytest.mark.parametrize("pipeline", ["StableDiffusionXLImg2ImgPipeline", "NoSuchPipeline"])
def test_an_unsupported_pipeline_is_refused_with_the_families_stepgrid_runs(tmp_path: Path, pipeline: str) -> None:
    # An SDXL refiner folder, or a class diffusers lacks: refused from its model_index.json, before diffusers
    # loads any weight.
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": pipeline}))
    with pytest.raises(ModelLoadError) as error:
        load_model(str(tmp_path), cache_dir=tmp_path)
    assert str(error.value).startswith(f"Model '{tmp_path}' is a {pipeline}; Stepgrid runs StableDiffusionPipeline, ")
    assert str(error.value).endswith("give one of those (--model, STEPGRID_MODEL or a registry source).")


def test_a_folder_missing_a_weights_file_says_to_save_or_download_it_again(
    model_cache_dir: Path, tmp_path: Path
) -> None:
    folder = shutil.copytree(ensure_test_model("tiny", model_cache_dir), tmp_path / "no-weights")
    (folder / "unet/diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ModelLoadError) as error:
        load_model(str(folder), cache_dir=model_cache_dir)
    message = str(error.value)
    assert f"Could not load model '{folder}' (Error no file named diffusion_pytorch_model.bin found" in message
    assert "Save or download that folder again, whole, or give a hub id" in message and "\n" not in message


def test_a_folder_without_model_index_json_is_told_to_be_no_pipeline_folder(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")  # e.g. the unet/ subfolder given by mistake
    with pytest.raises(ModelLoadError, match=r"has no model_index\.json, so it is not a diffusers pipeline folder"):
        load_model(str(tmp_path), cache_dir=tmp_path)


SDXL_KEY = "conditioner.embedders.1.model.ln_final.weight"
SD_KEY = "cond_stage_model.transformer.final_layer_norm.weight"
SCHNELL = "FluxPipeline.from_pretrained('black-forest-labs/FLUX.1-schnell', transformer=FluxTransformer2DModel"


@pytest.mark.parametrize(
    ("tensor", "pipeline"),
    [(SDXL_KEY, "StableDiffusionXLPipeline"), (SD_KEY, "StableDiffusionPipeline"),
     ("double_blocks.0.img_attn.norm.key_norm.scale", SCHNELL)],
)  # fmt: skip
def test_a_single_file_checkpoint_is_refused_with_how_to_convert_it(tmp_path: Path, tensor: str, pipeline: str) -> None:
    from safetensors.torch import save_file

    checkpoint = tmp_path / "juggernaut.safetensors"
    save_file({tensor: torch.zeros(2)}, str(checkpoint))
    for given in (checkpoint, tmp_path):  # the file, or the folder it was downloaded into
        with pytest.raises(ModelLoadError) as error:
            load_model(str(given), cache_dir=tmp_path)
        message = str(error.value)
        assert "is a single-file checkpoint (juggernaut.safetensors); Stepgrid loads diffusers folders." in message
        assert pipeline in message and f".from_single_file('{checkpoint}')" in message
        assert message.endswith(f".save_pretrained('{tmp_path / 'juggernaut'}')\" and give that folder.")


def test_a_variant_the_model_lacks_says_to_leave_it_out(model_cache_dir: Path) -> None:
    folder = ensure_test_model("tiny", model_cache_dir)
    with pytest.raises(ModelLoadError, match=r"Leave out variant = 'fp16' \(this model has no such weights\)"):
        load_model(ModelSpec(name="sd15", source=str(folder), variant="fp16"), cache_dir=model_cache_dir)

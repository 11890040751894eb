"""What a model folder can do, read from its configs before any weight loads: the loaded model's own ModelInfo."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from inference.model_info import GUIDANCE_IGNORED
from inference.models.files import info_before_loading, infos_before_loading
from inference.models.loading import load_model
from inference.models.test_models import ensure_test_model
from inference.registry import ModelSpec
from tests.inference.config_folders import FLUX_SCHNELL, SD15, config_only_folder


@pytest.mark.slow
@pytest.mark.parametrize(
    ("test_model", "spec"),
    [
        ("tiny", ModelSpec("sd", "")),
        ("tiny", ModelSpec("sd-turbo", "", scheduler="DDIM", steps=2)),  # few-step by its name; registry defaults
        ("tiny", ModelSpec("lcm-dreamshaper", "")),
        ("tiny-sdxl", ModelSpec("sdxl", "", guidance=4.0, max_steps=60)),
        ("tiny-flux", ModelSpec("schnell", "")),
        ("tiny-flux-dev", ModelSpec("dev", "", compare_steps=(4, 8))),
        ("tiny-sd3", ModelSpec("sd3", "")),
    ],
)
def test_a_folders_configs_tell_what_the_loaded_model_will_say(
    test_model: str, spec: ModelSpec, model_cache_dir: Path
) -> None:
    folder = ensure_test_model(test_model, model_cache_dir)
    spec = dataclasses.replace(spec, source=str(folder))
    before = info_before_loading(spec, model_cache_dir)
    assert before is not None
    assert before == load_model(spec, device="cpu", dtype="float32", cache_dir=model_cache_dir).info


def test_a_downloaded_hub_model_is_read_from_its_snapshot_in_the_cache(tmp_path: Path) -> None:
    repo = tmp_path / "hub" / "models--black-forest-labs--FLUX.1-schnell"
    config_only_folder(repo / "snapshots" / "abc123", FLUX_SCHNELL)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    info = info_before_loading(ModelSpec("schnell", "black-forest-labs/FLUX.1-schnell"), tmp_path)
    assert info is not None
    assert (info.family, info.guidance_mode, info.default_steps, info.size_multiple) == (
        "flux",
        GUIDANCE_IGNORED,
        4,
        16,
    )
    assert info_before_loading(ModelSpec("pinned", "black-forest-labs/FLUX.1-schnell", revision="abc123"), tmp_path)
    assert info_before_loading(ModelSpec("dev", "black-forest-labs/FLUX.1-dev"), tmp_path) is None  # not downloaded


def test_what_cant_be_told_without_loading_is_left_to_the_load(tmp_path: Path) -> None:
    kandinsky = config_only_folder(tmp_path / "kandinsky", {"model_index.json": {"_class_name": "KandinskyPipeline"}})
    no_vae = config_only_folder(tmp_path / "no-vae", {k: v for k, v in SD15.items() if not k.startswith("vae/")})
    for source in ("tiny", str(kandinsky), str(no_vae), str(tmp_path / "missing")):
        assert info_before_loading(ModelSpec("m", source), tmp_path) is None
    # A scheduler the registry names that the family can't run is the load's one line, as before.
    assert info_before_loading(ModelSpec("m", str(config_only_folder(tmp_path / "sd", SD15)), scheduler="LCM")) is None


def test_models_are_known_before_loading_only_when_all_of_them_are(tmp_path: Path) -> None:
    flux = ModelSpec("flux", str(config_only_folder(tmp_path / "flux", FLUX_SCHNELL)))
    sd = ModelSpec("sd", str(config_only_folder(tmp_path / "sd", SD15)))
    assert list(infos_before_loading((flux, sd), tmp_path)) == ["flux", "sd"]
    assert infos_before_loading((flux, ModelSpec("tiny", "tiny")), tmp_path) == {}  # which loads first is unknown

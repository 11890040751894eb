"""`stepgrid models`, and models that fail to load: one line and exit 2."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bot.cli.main import main
from tests.bot.cli.stepgrid_process import one_error_line, stepgrid
from tests.bot.cli.test_generate import REGISTRY


def test_models_without_loading_lists_the_registry(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STEPGRID_MODEL", REGISTRY)
    assert main(["models", "--no-load"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "configured (STEPGRID_MODEL):",
        "  quick (default): tiny-flux · steps 2, max steps 8",
        "  sd: tiny · ladder 2,4",
        "  gone: ./no/such/folder",
        "built in, to try offline (random weights, --model NAME): tiny, tiny-sdxl, tiny-flux, tiny-flux-dev, tiny-sd3",
    ]


@pytest.mark.parametrize(
    ("option", "message"),
    [(["--device", "tpu"], "--device 'tpu' is not a device"), (["--dtype", "fp8"], "--dtype 'fp8' is not a dtype")],
)
def test_models_with_a_bad_device_or_dtype_exits_2_before_starting_a_worker(
    option: list[str], message: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STEPGRID_MODEL", "tiny")
    assert main(["models", *option]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"stepgrid: {message}") and err.count("\n") == 1, err


@pytest.mark.slow
def test_models_loads_them_and_shows_each_ones_defaults_and_which_failed(
    model_cache_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STEPGRID_MODEL_CACHE_DIR", str(model_cache_dir))
    monkeypatch.setenv("STEPGRID_MODEL", REGISTRY)
    # "gone" is no test model, so `auto` would load the default image checker, which can't be downloaded
    # here (tests/bot/cli/test_safety.py covers the checker's line).
    monkeypatch.setenv("STEPGRID_SAFETY_CHECKER", "none")
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "  quick: flux — random-weight test model" in out
    assert "    defaults: 2 steps, Euler, no guidance (ignored), no negative prompt, 256x256" in out
    assert "    defaults: 30 steps, Euler a, guidance 7.5, 256x256" in out
    assert "    compare-steps ladder: 1,2,3,4,6,8; max steps 8" in out
    assert "  sd: sd" in out and "compare-steps ladder: 2,4; max steps 150" in out
    assert "unavailable:\n  gone: " in out


def broken_models(tiny: Path, tmp_path: Path) -> dict[str, tuple[str, str, str]]:
    """Models an operator might give --model that fail to load, made from the saved tiny model, with what
    the one line must say went wrong and what to do."""
    folders = {}
    for name in ("img2img", "no-such-class", "cut-off-weights", "no-weights"):
        folders[name] = shutil.copytree(tiny, tmp_path / name)
    for name, pipeline in (("img2img", "StableDiffusionImg2ImgPipeline"), ("no-such-class", "NoSuchPipeline")):
        index = folders[name] / "model_index.json"
        index.write_text(index.read_text().replace('"StableDiffusionPipeline"', f'"{pipeline}"'))
    weights = Path("unet/diffusion_pytorch_model.safetensors")
    (folders["cut-off-weights"] / weights).write_bytes((tiny / weights).read_bytes()[:1000])  # a download cut off
    (folders["no-weights"] / weights).unlink()
    again = "Save or download that folder again, whole, or give a hub id"
    return {
        "img2img": ("./img2img", "is a StableDiffusionImg2ImgPipeline; Stepgrid runs", "give one of those"),
        "no-such-class": ("./no-such-class", "is a NoSuchPipeline; Stepgrid runs", "give one of those"),
        "cut-off-weights": ("./cut-off-weights", "(Unable to load weights from checkpoint file", again),
        "no-weights": ("./no-weights", "(Error no file named diffusion_pytorch_model.bin found", again),
        "offline hub id": ("owner/not-cached", "(HF_HUB_OFFLINE is set and the model is not in the", "Give a local"),
    }


# One real `stepgrid imagine` per way of failing: refused from model_index.json, failed in from_pretrained, not in
# the hub cache. The others of `broken_models` take the same paths (an unknown class as img2img, a missing weights
# file as a cut-off one): tests/inference/models/test_loading.py checks their messages without a process.
@pytest.mark.slow
@pytest.mark.parametrize("case", ["img2img", "cut-off-weights", "offline hub id"])
def test_a_model_that_fails_to_load_exits_2_with_one_line_saying_what_to_do(
    case: str, tmp_path: Path, model_cache_dir: Path
) -> None:
    from inference.models.loading import ensure_test_model  # torch: only this test of the file needs it here

    model, reason, advice = broken_models(ensure_test_model("tiny", model_cache_dir), tmp_path)[case]
    result = stepgrid(
        "imagine", "a fox", "--model", model, "--steps", "2", "--size", "256", "-o", str(tmp_path / "fox.png"),
        cwd=tmp_path, STEPGRID_MODEL_CACHE_DIR=str(model_cache_dir), HF_HUB_OFFLINE="1",
    )  # fmt: skip
    line = one_error_line(result)  # and no traceback, from the command or its worker
    assert result.returncode == 2, result.stderr
    assert reason in line and advice in line and line.endswith("(--model, STEPGRID_MODEL or a registry source)."), line
    assert [other for other in result.stderr.splitlines() if other != line] == [f"loading {model} ..."], result.stderr
    assert not (tmp_path / "fox.png").exists()


@pytest.mark.slow
def test_models_exits_2_when_no_configured_model_loads(
    tmp_path: Path, model_cache_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from inference.models.loading import ensure_test_model

    broken_models(ensure_test_model("tiny", model_cache_dir), tmp_path)
    monkeypatch.setenv("STEPGRID_MODEL_CACHE_DIR", str(model_cache_dir))
    monkeypatch.setenv("STEPGRID_MODEL", str(tmp_path / "img2img"))
    assert main(["models"]) == 2
    assert "no model loaded" in capsys.readouterr().err


@pytest.mark.slow
def test_models_lists_each_models_loras_and_names_one_of_another_family(
    model_cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.inference.loras import make_lora

    sd = make_lora("tiny", tmp_path, "sd", seed=1, cache_dir=model_cache_dir)
    sdxl = make_lora("tiny-sdxl", tmp_path, "sdxl", seed=2, cache_dir=model_cache_dir)
    registry = tmp_path / "models.toml"
    registry.write_text(f"""
[[models]]
name = "sd"
source = "tiny"
  [[models.loras]]
  name = "pixel"
  source = "{sd.kohya}"
  weight = 0.8
  triggers = ["pixel art"]
  [[models.loras]]
  name = "lcm"
  source = "{sd.diffusers}"
  few_step = true
  [[models.loras]]
  name = "xl-only"
  source = "{sdxl.kohya}"
""")
    monkeypatch.setenv("STEPGRID_MODEL_CACHE_DIR", str(model_cache_dir))
    monkeypatch.setenv("STEPGRID_MODEL", str(registry))
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert f"    LoRA pixel: {sd.kohya} · weight 0.8\n" in out
    assert "    LoRA pixel: weight 0.8; triggers: pixel art\n" in out
    assert "    LoRA lcm: weight 1; few-step: 4 steps, LCM, guidance 1\n" in out
    assert "    LoRA xl-only unavailable: LoRA 'xl-only' (" in out and "another model family" in out

"""What the image checker costs per image, against the image's own denoising time (issue #24, item 6).

Two pairs, on this machine's CPU (no GPU figure: none was lent):

- `tiny`: the tiny SD 1.x test model's 30-step 256² image as the engine runs it (its `seconds`, the share
  of every batched call it took part in, decode included; no checker), against the tests' tiny rigged
  ViT classifier (tests/safety_checkers.py).
- `realistic`: an SD 1.5-sized 30-step 512² image, estimated from its parts as timed here: 30 UNet calls of
  one CFG lane (2 rows, 64×64 latents, random weights of SD 1.5's architecture) plus one VAE decode. Against
  a ViT-base classifier built from the default checker's config (Falconsai/nsfw_image_detection: 224², patch
  16, hidden 768, 12 layers, labels normal/nsfw) with random weights, saved and loaded through
  `load_checker` as a real one is, its image processor included (resizing the 512² picture to 224²).

Each checker is timed checking B pictures in one call (as the engine does: one call per finished batch of
lanes) and one at a time, per image. The engine's own calls are counted too: a job of 4 images, and a grid
of 6 cells, each finishing in one iteration, must each take one checker call.

    python benchmarks/bench_safety.py --out benchmarks/results/cpu-safety.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.machine import cpu_name
from inference.engine.lane_engine import LaneEngine
from inference.models.loading import load_model
from inference.models.test_models import _sd_components
from inference.protocol import JobResult, SafetyVerdict, WorkerConfig
from inference.requests import CompareStepsRequest, GenerateRequest
from inference.safety import ImageChecker, load_checker
from tests.safety_checkers import save_tiny_classifier

CPU = torch.device("cpu")
STEPS = 30


def best(work: Callable[[], Any], repeats: int) -> float:
    """The median of `repeats` timed runs after one warm-up run."""
    work()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def checker_cost(checker: ImageChecker, pictures: Sequence[np.ndarray], repeats: int) -> dict[str, float]:
    """Seconds per image: all pictures in one call, and one call per picture."""
    batched = best(lambda: checker.check(list(pictures)), repeats) / len(pictures)
    alone = best(lambda: [checker.check([picture]) for picture in pictures], repeats) / len(pictures)
    return {"batch": len(pictures), "batched_s_per_image": batched, "one_by_one_s_per_image": alone}


def save_vit_base(folder: Path) -> Path:
    """A ViT-base classifier with the default checker's config and random weights (no download)."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    labels = {0: "normal", 1: "nsfw"}
    config = ViTConfig(image_size=224, patch_size=16, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                       intermediate_size=3072, id2label=labels, label2id={v: k for k, v in labels.items()})  # fmt: skip
    torch.manual_seed(0)
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": 224, "width": 224}).save_pretrained(folder)
    return folder


class CountingEngine(LaneEngine):
    """The real engine, counting its checker calls and the pictures in each."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.events: list[Any] = []
        super().__init__(*args, self.events.append, **kwargs)
        self.calls: list[int] = []

    def verdicts(self, pictures: Sequence[np.ndarray] | np.ndarray) -> list[SafetyVerdict | None]:
        self.calls.append(len(pictures))
        return super().verdicts(pictures)


def engine_calls(model: Any, checker: ImageChecker) -> dict[str, list[int]]:
    """How many checker calls (and pictures in each) the engine makes for a 4-image job and a 6-cell grid."""
    out = {}
    for name, request in (
        ("imagine_count_4", GenerateRequest("a fox", steps=4, scheduler="Euler", width=256, height=256, count=4)),
        ("compare_steps_6_cells", CompareStepsRequest("a fox", steps=(2, 3, 4, 5, 6, 8), scheduler="Euler",
                                                      width=256, height=256)),
    ):  # fmt: skip
        engine = CountingEngine(model, max_batch_lanes=16, previews=False, checker=checker)
        engine.add_job(name, request)
        engine.run_until_idle()
        engine.close()
        out[name] = engine.calls
    return out


def tiny_pair(cache: Path, folder: Path, repeats: int) -> dict[str, Any]:
    model = load_model("tiny", cache_dir=cache)
    engine = CountingEngine(model, max_batch_lanes=16, previews=False)
    request = GenerateRequest("a red fox in snow", steps=STEPS, scheduler="Euler", width=256, height=256, count=4)
    seconds = []
    for round_ in range(repeats + 1):  # the first is a warm-up
        engine.add_job(f"job{round_}", request)
        engine.run_until_idle()
        result = next(e for e in engine.events if isinstance(e, JobResult) and e.job_id == f"job{round_}")
        if round_:
            seconds += [image.seconds for image in result.images]
    engine.close()
    checker = load_checker(WorkerConfig(model="tiny", safety_checker=str(save_tiny_classifier(folder, flags=False))),
                           CPU, torch.float32)  # fmt: skip
    assert checker is not None
    pictures = [np.random.default_rng(i).integers(0, 256, (256, 256, 3), dtype=np.uint8) for i in range(4)]
    cost = checker_cost(checker, pictures, repeats)
    image = statistics.median(seconds)
    return {
        "image": f"tiny SD 1.x test model, {STEPS} steps Euler, 256x256, 4 lanes batched (its share, decode included)",
        "image_s": image,
        "checker": "tiny test ViT (32x32, 1 layer)",
        **cost,
        "batched_ratio": cost["batched_s_per_image"] / image,
        "one_by_one_ratio": cost["one_by_one_s_per_image"] / image,
        "engine_checker_calls": engine_calls(model, checker),
    }


@torch.no_grad()
def realistic_pair(folder: Path, repeats: int) -> dict[str, Any]:
    parts = _sd_components("sd15-arch")
    unet, vae = parts["unet"].eval(), parts["vae"].eval()
    latents = torch.randn(2, 4, 64, 64)  # one CFG lane: conditional and unconditional rows
    timestep = torch.tensor([500, 500])
    text = torch.randn(2, 77, 768)
    unet_s = best(lambda: unet(latents, timestep, encoder_hidden_states=text), max(1, repeats // 2))
    decode_s = best(lambda: vae.decode(latents[:1] / 0.18215), max(1, repeats // 2))
    print(json.dumps({"unet_call_s": unet_s, "vae_decode_s": decode_s}), file=sys.stderr, flush=True)
    image = STEPS * unet_s + decode_s
    checker = load_checker(WorkerConfig(model="x", safety_checker=str(save_vit_base(folder))), CPU, torch.float32)
    assert checker is not None
    pictures = [np.random.default_rng(i).integers(0, 256, (512, 512, 3), dtype=np.uint8) for i in range(4)]
    cost = checker_cost(checker, pictures, repeats)
    return {
        "image": f"SD 1.5 architecture (random weights), {STEPS} steps at 512x512, one CFG lane: "
        f"{STEPS} x UNet(2 rows) + VAE decode, timed as parts",
        "unet_call_s": unet_s,
        "vae_decode_s": decode_s,
        "image_s": image,
        "checker": "ViT-base from Falconsai/nsfw_image_detection's config, random weights, 512x512 -> 224x224",
        **cost,
        "batched_ratio": cost["batched_s_per_image"] / image,
        "one_by_one_ratio": cost["one_by_one_s_per_image"] / image,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--part", choices=("tiny", "realistic", "both"), default="both")
    args = parser.parse_args()
    figures: dict[str, Any] = {"machine": cpu_name(), "python": platform.python_version(), "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        if args.part in ("tiny", "both"):
            figures["tiny"] = tiny_pair(Path(tmp) / "models", Path(tmp) / "tiny-checker", args.repeats)
            print(json.dumps(figures["tiny"]), file=sys.stderr, flush=True)  # kept if a later part is cut short
        if args.part in ("realistic", "both"):
            figures["realistic"] = realistic_pair(Path(tmp) / "vit-base", args.repeats)
    text = json.dumps(figures, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()

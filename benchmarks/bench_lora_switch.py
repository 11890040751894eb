"""What switching LoRAs between denoiser calls costs, on the tiny CPU models of each family.

The engine groups lanes by (model, LoRA set, size) and calls `set_adapters` (or `disable_lora`) before
a group's denoiser call when the set differs from the last one's. This measures, per family, as
ratios to one denoiser call of one CFG lane (the smallest call there is, so the harshest ratio):

- `switch`: changing the active set between two LoRAs (`set_adapters`), and to and from no LoRA
  (`enable_lora` + `set_adapters`, `disable_lora`);
- `lora_call`: a denoiser call with a LoRA active over one without (what fusing could save at most);
- `reload`: loading a LoRA from its file (what a cache miss past the cap costs; never paid per switch).

    python benchmarks/bench_lora_switch.py --out benchmarks/results/cpu-lora-switch.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inference.families import DenoiserBatch
from inference.models.adapters import adapter_key
from inference.models.loading import LoadedModel, load_model
from inference.registry import LoraSpec, ModelSpec
from tests.inference.loras import make_lora

FAMILIES = ("tiny", "tiny-sdxl", "tiny-flux")


def one_call(model: LoadedModel, size: int) -> Callable[[], Any]:
    family = model.family
    guidance = 5.0 if model.info.family != "flux" else 0.0
    conditioning = family.encode("a red fox", "", guidance, size, size)
    scheduler = family.new_scheduler("Euler", 4, 0, size, size)
    latents = family.initial_latents(scheduler, size, size, torch.Generator("cpu").manual_seed(0))
    batch = DenoiserBatch([family.model_input(scheduler, latents, scheduler.timesteps[0])],
                          [scheduler.timesteps[0]], [conditioning], 1)  # fmt: skip

    @torch.no_grad()
    def call() -> Any:
        return family.predict(family.denoiser, batch)

    return call


def measure(name: str, folder: Path, cache: Path, size: int, repeats: int) -> dict[str, float]:
    a = make_lora(name, folder, "a", seed=1, cache_dir=cache)
    b = make_lora(name, folder, "b", seed=2, cache_dir=cache)
    specs = (LoraSpec("a", str(a.diffusers)), LoraSpec("b", str(b.kohya)))
    model = load_model(ModelSpec(name, name, loras=specs), cache_dir=cache)
    adapters = model.adapters
    assert adapters is not None
    call = one_call(model, size)
    a_set, b_set = adapter_key([("a", 1.0)]), adapter_key([("b", 0.7)])
    # Interleaved, one of each per round, so a noisy shared machine slows every figure alike.
    times: dict[str, list[float]] = {key: [] for key in ("plain", "lora", "to_lora", "between", "to_none", "reload")}

    def timed(key: str, work: Callable[[], Any]) -> None:
        started = time.perf_counter()
        work()
        times[key].append(time.perf_counter() - started)

    def reload_b() -> None:
        adapters._forget("b")
        adapters._load(specs[1])

    adapters.activate(())
    call()  # warm-up
    for _ in range(repeats):
        timed("plain", call)
        timed("to_lora", lambda: adapters.activate(a_set))
        timed("lora", call)
        timed("between", lambda: adapters.activate(b_set))
        timed("to_none", lambda: adapters.activate(()))
        timed("reload", reload_b)
    plain, with_lora, between, to_none, reload = (
        statistics.median(times[key]) for key in ("plain", "lora", "between", "to_none", "reload")
    )
    to_lora = statistics.median(times["to_lora"])
    return {
        "denoiser_call_s": plain,
        "switch_between_loras_vs_call": between / plain,
        "switch_from_no_lora_vs_call": to_lora / plain,
        "switch_to_no_lora_vs_call": to_none / plain,
        "call_with_lora_vs_call_without": with_lora / plain,
        "reload_from_file_vs_call": reload / plain,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    transformers.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    results: dict[str, Any] = {
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "size": args.size,
        "repeats": args.repeats,
        "threads": args.threads,
        "families": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.families.split(","):
            figures = measure(name, Path(tmp) / name, Path(tmp) / "cache", args.size, args.repeats)
            results["families"][name] = figures
            print(name, " ".join(f"{key}={value:.3g}" for key, value in figures.items()))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

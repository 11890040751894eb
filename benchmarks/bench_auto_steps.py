"""What `steps: auto` saves against the model's default step count, and how its image differs.

For each prompt × seed × scheduler, three lanes in one engine (batched, as the worker runs them): an auto
run (at most the model's longest ladder count), an honest run of the model's default step count and one
of the longest count. Reported per case and as medians:
- steps the auto run ran, and what that saves against the default count (negative: it ran more);
- its cost (its share of the batched calls, its settle checks' VAE decodes included) against the default run's;
- ΔE (inference.settling.change_percent, the sweet-spot measure) of its image against the default-count
  image and against the longest-count image (under 2%: "settled" by the grids' own threshold);
- what one settle check costs: a VAE decode of one x0 against one denoiser call of one lane.

    python benchmarks/bench_auto_steps.py                                   # CPU, tiny random-weight model
    python benchmarks/bench_auto_steps.py --out benchmarks/results/cpu-auto-steps.json
    python benchmarks/bench_auto_steps.py --device cuda --model sd15-arch --size 512
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.machine import device_name
from inference.engine.lane_engine import LaneEngine
from inference.families import DenoiserBatch
from inference.models.loading import load_model
from inference.protocol import JobEvent, JobResult, ProgressBatch
from inference.requests import GenerateRequest
from inference.settling import SETTLED_BELOW, change_percent, check_every

PROMPTS = ("a red fox in the snow", "a lighthouse on a cliff at dusk", "a bowl of ramen, studio photo")
SEEDS = (1, 2)
SCHEDULERS = ("Euler", "DPM++ 2M")


def image(result: JobResult) -> Image.Image:
    return Image.open(io.BytesIO(result.images[0].png))


def check_cost(engine: LaneEngine, size: int, repeats: int = 5) -> dict[str, float]:
    """Seconds of one x0 decode (a settle check) and of one denoiser call of one lane, median of `repeats`."""
    model = engine.model
    family = model.family
    scheduler = family.new_scheduler("Euler", 10, 0, size, size)
    latents = family.initial_latents(scheduler, size, size, torch.Generator("cpu").manual_seed(0))
    conditioning = family.encode("a fox", "", 7.5, size, size)

    def timed(work: Any) -> float:
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            work()
            times.append(time.perf_counter() - started)
        return statistics.median(times)

    with torch.no_grad():
        batch = DenoiserBatch([latents], [scheduler.timesteps[0]], [conditioning], 1)
        call = timed(lambda: family.predict(family.denoiser, batch))
        decode = timed(lambda: engine.decode(latents, model, size, size))
    return {"decode_s": decode, "denoiser_call_s": call, "decode_per_call": decode / call}


def run(args: argparse.Namespace) -> dict[str, Any]:
    model = load_model(args.model, device=args.device, cache_dir=args.cache_dir)
    info = model.info
    most, default = max(info.compare_steps), info.default_steps
    events: list[JobEvent | ProgressBatch] = []
    engine = LaneEngine(model, events.append, previews=False, max_batch_lanes=args.batch)
    cases = [(p, s, sch) for p in PROMPTS[: args.prompts] for s in SEEDS for sch in SCHEDULERS]
    for n, (prompt, seed, scheduler) in enumerate(cases):
        base = GenerateRequest(prompt, seed=seed, scheduler=scheduler, width=args.size, height=args.size, steps=most)
        engine.add_job(f"auto-{n}", dataclasses.replace(base, auto_steps=True))
        engine.add_job(f"default-{n}", dataclasses.replace(base, steps=default))
        engine.add_job(f"most-{n}", base)
    started = time.perf_counter()
    engine.run_until_idle()
    wall = time.perf_counter() - started
    results = {e.job_id: e for e in events if isinstance(e, JobResult)}
    rows = []
    for n, (prompt, seed, scheduler) in enumerate(cases):
        auto, plain, longest = results[f"auto-{n}"], results[f"default-{n}"], results[f"most-{n}"]
        ran = auto.images[0].steps_run
        rows.append({
            "prompt": prompt, "seed": seed, "scheduler": scheduler, "auto_steps": ran,
            "settled": auto.images[0].auto_settled, "saved_vs_default": default - ran,
            "cost_vs_default": auto.gpu_seconds / plain.gpu_seconds,
            "delta_e_vs_default": change_percent(image(plain), image(auto)),
            "delta_e_vs_longest": change_percent(image(longest), image(auto)),
        })  # fmt: skip
    costs = check_cost(engine, args.size)
    engine.close()

    def median(key: str) -> float:
        return statistics.median(float(row[key]) for row in rows)

    return {
        "model": args.model, "device": device_name(model), "size": args.size, "default_steps": default,
        "most_steps": most, "check_every": check_every(most), "settled_below_percent": SETTLED_BELOW,
        "cases": rows, "wall_seconds": wall, "settle_check": costs,
        "median": {key: median(key) for key in ("auto_steps", "saved_vs_default", "cost_vs_default",
                                                "delta_e_vs_default", "delta_e_vs_longest")},
        "settled_cases": sum(1 for row in rows if row["settled"]), "all_cases": len(rows),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--prompts", type=int, default=len(PROMPTS))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    report = run(args)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()

"""How long admitting one job takes, per scheduler: the engine thread does it between two iterations,
so every running lane waits for it.

For each scheduler: its first job in this process (nothing to reuse: one sample); then, on fresh
engines, a job whose scheduler kind was built before but not for these steps, one with the same
steps and another prompt (the scheduler is reused, not the text), and one with the same prompt again
(both are reused); medians of --repeats fresh engines.

    python benchmarks/bench_admission.py --out benchmarks/results/cpu-admission.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inference.engine.lane_engine import LaneEngine
from inference.models.loading import load_model
from inference.requests import GenerateRequest

CASES = ("first job", "new steps", "same steps, new prompt", "same steps and prompt")


def admission_ms(engine: LaneEngine, job_id: str, request: GenerateRequest) -> float:
    started = time.perf_counter()
    engine.add_job(job_id, request)
    return (time.perf_counter() - started) * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    model = load_model(args.model, device=args.device, cache_dir=args.cache_dir)
    prompts = ("a lighthouse on a cliff at dusk, oil painting", "a red fox in the snow, watercolour")

    def request(name: str, prompt: str, seed: int, steps: int = args.steps) -> GenerateRequest:
        return GenerateRequest(prompt, steps=steps, scheduler=name, seed=seed, width=args.size, height=args.size)

    model.family.encode("warm-up", "", 7.5, args.size, args.size)  # the text encoder's first call
    rows: dict[str, dict[str, float]] = {}
    print(f"# admitting a job of {args.steps}+ steps, {args.model} on {args.device}, ms (first job: one sample; "
          f"the rest: median of {args.repeats})")  # fmt: skip
    print("| scheduler | " + " | ".join(CASES) + " |")
    print("|---|" + "---|" * len(CASES))
    for name in model.info.schedulers:
        times: list[list[float]] = [[] for _ in CASES]
        cold = LaneEngine(model, lambda _: None, previews=False)
        times[0].append(admission_ms(cold, "cold", request(name, prompts[0], 1)))
        cold.close()
        for repeat in range(args.repeats):
            steps = args.steps + 1 + repeat  # steps no job of this kind had before
            engine = LaneEngine(model, lambda _: None, previews=False)
            times[1].append(admission_ms(engine, "a", request(name, prompts[0], 1, steps)))
            times[2].append(admission_ms(engine, "b", request(name, prompts[1], 2, steps)))
            times[3].append(admission_ms(engine, "c", request(name, prompts[1], 3, steps)))
            engine.close()
        rows[name] = {case: statistics.median(t) for case, t in zip(CASES, times, strict=True)}
        print(f"| {name} | " + " | ".join(f"{rows[name][case]:.2f}" for case in CASES) + " |", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        payload = {"model": args.model, "device": args.device, "torch_threads": torch.get_num_threads(),
                   "args": {k: str(v) for k, v in vars(args).items()}, "ms": rows}  # fmt: skip
        args.out.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

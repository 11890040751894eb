"""Benchmark Stepgrid's lane engine against one-at-a-time runs and the plain diffusers pipeline.

Everything is measured in one run on the same weights, so the ratios hold on a noisy machine:

    python benchmarks/bench_engine.py                                   # CPU, tiny random-weight model
    python benchmarks/bench_engine.py --device cuda --model sd15-arch   # GPU, SD1.5 architecture, random weights
    python benchmarks/bench_engine.py --device cuda --model /models/sd15  # GPU, real weights from a folder

Figures are printed as a table and, with --out, written as JSON beside the card's name.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inference.engine import LaneEngine
from inference.loading import LoadedModel, load_model
from inference.protocol import (
    DEFAULT_COMPARE_STEPS,
    CompareStepsRequest,
    GenerateRequest,
    JobEvent,
    JobResult,
    parse_step_list,
)
from inference.schedulers import make_scheduler


@dataclass
class Report:
    device: str
    model: str
    figures: dict[str, float] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)

    def add(self, key: str, value: float, text: str) -> None:
        self.figures[key] = value
        self.lines.append(text)
        print(text, flush=True)


def _sync(model: LoadedModel) -> None:
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)


def timed(model: LoadedModel, fn: Callable[[], Any], repeats: int) -> float:
    """Median wall seconds of `fn` over `repeats` runs (after the caller's warm-up)."""
    times = []
    for _ in range(repeats):
        _sync(model)
        started = time.perf_counter()
        fn()
        _sync(model)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


class Bench:
    def __init__(self, model: LoadedModel, args: argparse.Namespace) -> None:
        self.model = model
        self.args = args
        self.results: list[JobEvent] = []
        self.engine = LaneEngine(model, self.results.append, max_batch_lanes=args.max_batch_lanes, previews=False)
        self._ids = 0

    def request(self, steps: int, seed: int = 0, scheduler: str | None = None) -> GenerateRequest:
        return GenerateRequest(
            self.args.prompt, steps=steps, scheduler=scheduler or self.args.scheduler, seed=seed,
            width=self.args.size, height=self.args.size,
        )  # fmt: skip

    def run_jobs(self, requests: list[GenerateRequest | CompareStepsRequest]) -> list[JobResult]:
        """Add all requests at once and run the engine until every image is encoded."""
        ids = []
        for request in requests:
            self._ids += 1
            ids.append(f"bench-{self._ids}")
            self.engine.add_job(ids[-1], request)
        self.engine.run_until_idle()
        by_id = {e.job_id: e for e in self.results if isinstance(e, JobResult)}
        self.results.clear()
        return [by_id[job_id] for job_id in ids]

    def run_one_by_one(self, requests: list[GenerateRequest]) -> None:
        for request in requests:
            self.run_jobs([request])

    def plain_call(self, steps: int, images: int = 1, seed: int = 0, scheduler: str | None = None) -> Any:
        """The plain StableDiffusionPipeline call on the same components, with its own scheduler."""
        pipe = self.model.pipe
        name = scheduler or self.args.scheduler
        scheduler = make_scheduler(pipe.scheduler.config, name, seed)
        plain = type(pipe)(**{**pipe.components, "scheduler": scheduler}, requires_safety_checker=False)
        plain.set_progress_bar_config(disable=True)
        return plain(
            self.args.prompt, num_inference_steps=steps, guidance_scale=7.5, height=self.args.size,
            width=self.args.size, num_images_per_prompt=images, output_type="np",
            generator=torch.Generator("cpu").manual_seed(seed),
        ).images  # fmt: skip


def _cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    except OSError:
        names = []
    return f"{names[0] if names else platform.processor() or 'CPU'}, {torch.get_num_threads()} threads"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def run(args: argparse.Namespace) -> Report:
    model = load_model(args.model, device=args.device, dtype=args.dtype, cache_dir=args.cache_dir)
    card = torch.cuda.get_device_name(model.device) if model.device.type == "cuda" else _cpu_name()
    report = Report(device=card, model=args.model)
    print(f"# {args.model} on {card} ({str(model.dtype).removeprefix('torch.')}), {args.size}x{args.size}, "
          f"{args.scheduler}, {'random weights' if model.is_test_model else 'real weights'}", flush=True)  # fmt: skip
    if args.fuse_qkv:
        model.pipe.fuse_qkv_projections()  # shared components: the plain path gets it too
        print("fused QKV projections", flush=True)
    bench = Bench(model, args)
    steps, repeats = args.steps, args.repeats
    if args.compile:
        if args.buckets:
            bench.engine.batch_buckets = args.buckets
        seconds = bench.engine.compile_unet(args.size, args.size)
        report.add("compile_s", seconds, f"compiled the UNet for batch buckets {bench.engine.batch_buckets} "
                   f"in {seconds:.0f}s (the plain pipeline stays eager)")  # fmt: skip

    bench.run_jobs([bench.request(2)])  # warm-up: lazy init, kernels, allocator
    bench.plain_call(2)

    # compare-steps: one batched job vs six sequential runs of the same cells
    compare = CompareStepsRequest(args.prompt, steps=args.compare, scheduler=args.scheduler, seed=1,
                                  width=args.size, height=args.size)  # fmt: skip
    cells = [bench.request(n, seed=1) for n in args.compare]
    batched = timed(model, lambda: bench.run_jobs([compare]), repeats)
    sequential = timed(model, lambda: bench.run_one_by_one(cells), repeats)
    report.add("compare_batched_s", batched, f"compare-steps {args.compare}: batched {batched:.2f}s, "
               f"six sequential {sequential:.2f}s -> engine {sequential / batched:.2f}x as fast")  # fmt: skip
    report.figures["compare_sequential_s"] = sequential
    report.figures["compare_speedup"] = sequential / batched

    # concurrent /imagine jobs: all at once vs one at a time
    n = args.concurrent
    jobs = [bench.request(steps, seed=i) for i in range(n)]
    together = timed(model, lambda: bench.run_jobs(list(jobs)), repeats)
    alone = timed(model, lambda: bench.run_one_by_one(jobs), repeats)
    report.add("concurrent_batched_s", together, f"{n} concurrent {steps}-step imagine jobs: batched "
               f"{together:.2f}s ({n / together:.2f} images/s), one at a time {alone:.2f}s "
               f"-> engine {alone / together:.2f}x as fast")  # fmt: skip
    report.figures["concurrent_one_at_a_time_s"] = alone
    report.figures["concurrent_speedup"] = alone / together
    report.figures["concurrent_images_per_s"] = n / together

    if args.plain:
        # one image end to end (denoise + decode + PNG) vs the plain pipeline call
        ours = timed(model, lambda: bench.run_jobs([bench.request(steps)]), repeats)
        plain = timed(model, lambda: bench.plain_call(steps), repeats)
        report.add("single_it_per_s", steps / ours, f"one {steps}-step image: engine {ours:.3f}s "
                   f"({steps / ours:.1f} it/s incl. decode+PNG), plain pipeline {plain:.3f}s "
                   f"({steps / plain:.1f} it/s) -> engine {plain / ours:.2f}x as fast")  # fmt: skip
        report.figures["plain_single_it_per_s"] = steps / plain

        plain_many = timed(model, lambda: bench.plain_call(steps, images=n), repeats)
        report.add("plain_batch_images_per_s", n / plain_many, f"plain pipeline, {n} images in one call: "
                   f"{plain_many:.2f}s ({n / plain_many:.2f} images/s); engine {n / together:.2f} images/s "
                   f"-> engine {plain_many / together:.2f}x as fast")  # fmt: skip

        plain_compare = timed(model, lambda: [bench.plain_call(k, seed=1) for k in args.compare], repeats)
        report.add("plain_compare_s", plain_compare, f"compare-steps as six plain pipeline calls: {plain_compare:.2f}s "
                   f"-> engine {plain_compare / batched:.2f}x as fast")  # fmt: skip

        # images equal the plain path's (within the dtype's tolerance)
        [result] = bench.run_jobs([bench.request(steps, seed=7)])
        from io import BytesIO

        from PIL import Image

        ours_pixels = np.asarray(Image.open(BytesIO(result.images[0].png)).convert("RGB"))
        plain_pixels = (bench.plain_call(steps, seed=7)[0] * 255).round().astype(np.uint8)
        value = psnr(ours_pixels, plain_pixels)
        report.add("psnr_db", value, f"PSNR engine vs plain pipeline, same seed: {value:.1f} dB")
    bench.engine.close()
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="tiny, sd15-arch, a local folder or a hub id")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--size", type=int, default=None, help="default: 256 for tiny, 512 otherwise")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--scheduler", default="Euler")
    parser.add_argument("--compare", type=parse_step_list, default=DEFAULT_COMPARE_STEPS, help="e.g. 5,10,20")
    parser.add_argument("--concurrent", type=int, default=8)
    parser.add_argument("--max-batch-lanes", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prompt", default="a lighthouse on a cliff at dusk, oil painting")
    parser.add_argument("--no-plain", dest="plain", action="store_false", help="skip the plain pipeline figures")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--compile", action="store_true", help="torch.compile the engine's UNet (CUDA graphs)")
    parser.add_argument("--buckets", type=parse_step_list, default=None, help="batch buckets to compile, e.g. 1,8,16")
    parser.add_argument("--fuse-qkv", action="store_true", help="fuse attention QKV projections (both paths)")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    if args.size is None:
        args.size = 256 if args.model == "tiny" else 512
    report = run(args)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        payload = {"device": report.device, "model": report.model, "args": {k: str(v) for k, v in vars(args).items()},
                   "figures": report.figures, "lines": report.lines}  # fmt: skip
        args.out.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

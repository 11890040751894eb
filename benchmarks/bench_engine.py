"""Benchmark Stepgrid's lane engine against one-at-a-time runs and the plain diffusers pipeline.

Everything is measured in one run on the same weights, so the ratios hold on a noisy machine:

    python benchmarks/bench_engine.py                                   # CPU, tiny random-weight model
    python benchmarks/bench_engine.py --device cuda --model sd15-arch   # GPU, SD1.5 architecture, random weights
    python benchmarks/bench_engine.py --device cuda --model /models/sd15  # GPU, real weights from a folder
    python benchmarks/bench_engine.py --families tiny,tiny-sdxl,tiny-flux,tiny-sd3  # a row per family (CPU)
    python benchmarks/bench_engine.py --device cuda --dtype bfloat16 --families flux-schnell-arch --size 1024

Figures are printed as a table and, with --out, written as JSON beside the card's name. On a CPU each
batched figure also reports the seconds spent inside the denoiser and the VAE decoder, and so the ratio
the same run would reach with no host work at all.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_overhead import add_arguments as add_overhead_arguments
from benchmarks.bench_overhead import run_overhead
from benchmarks.machine import device_name
from inference.engine.lane_engine import LaneEngine
from inference.imaging import encode_png
from inference.models.loading import LoadedModel, load_model
from inference.protocol import JobEvent, JobResult, ProgressBatch
from inference.requests import (
    DEFAULT_COMPARE_STEPS,
    DEFAULT_GRID_SCHEDULERS,
    CompareSchedulersRequest,
    CompareStepsRequest,
    GenerateRequest,
    Request,
)
from inference.schedulers import make_scheduler
from inference.validation import parse_step_list

FLOW_FAMILIES = ("flux", "sd3")


@dataclass
class Report:
    device: str
    model: str
    figures: dict[str, float] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, key: str, value: float, text: str) -> None:
        self.figures[key] = value
        self.lines.append(text)
        print(text, flush=True)


def _sync(model: LoadedModel) -> None:
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)


# "wall": elapsed seconds. "cpu": seconds of CPU time this process used, all its threads together
# (the engine's encoder thread included): on a shared box it counts the work, not the neighbours'
# load; CPU only, as a GPU's time is not in it.
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}
clock = CLOCKS["wall"]


class NetworkTime:
    """Seconds spent inside the denoiser and the VAE decoder, by the chosen clock (CPU only: forward
    hooks, which on a GPU would time launches, not work).

    The networks' time is the part of a figure no engine can remove: the ratio of two paths'
    network seconds is the best ratio they could reach if every host-side step took no time."""

    def __init__(self, model: LoadedModel) -> None:
        self.seconds = 0.0
        self._started = 0.0
        self.enabled = model.device.type == "cpu"
        if self.enabled:
            for module in (model.family.denoiser, model.pipe.vae.decoder):
                module.register_forward_pre_hook(self._start)
                module.register_forward_hook(self._stop)

    def _start(self, *_: Any) -> None:
        self._started = clock()

    def _stop(self, *_: Any) -> None:
        self.seconds += clock() - self._started


def timed(model: LoadedModel, fn: Callable[[], Any], repeats: int) -> float:
    """Median seconds of `fn` by the chosen clock over `repeats` runs (after the caller's warm-up)."""
    return timed_split(model, fn, repeats, None)[0]


def timed_split(
    model: LoadedModel, fn: Callable[[], Any], repeats: int, networks: NetworkTime | None
) -> tuple[float, float]:
    """(median seconds of `fn`, median seconds of the same runs spent inside the networks; NaN
    where they aren't measured)."""
    times, inside = [], []
    for _ in range(repeats):
        _sync(model)
        if networks:
            networks.seconds = 0.0
        started = clock()
        fn()
        _sync(model)
        times.append(clock() - started)
        inside.append(networks.seconds if networks and networks.enabled else math.nan)
    return statistics.median(times), statistics.median(inside)


def interleaved(
    ours: Callable[[], Any], theirs: Callable[[], Any], pairs: int, sync: Callable[[], None] = lambda: None
) -> tuple[float, float, float]:
    """(median seconds of `ours`, of `theirs`, median of the per-pair ratios theirs/ours).

    Two paths whose difference is small next to this machine's load swings are timed back to back
    in pairs, the order flipped every pair, so that both see the same load and a drift in it
    favours neither; each pair gives one ratio."""
    ours_times, theirs_times, ratios = [], [], []
    for pair in range(pairs):
        first, second = (ours, theirs) if pair % 2 == 0 else (theirs, ours)
        times = []
        for fn in (first, second):
            sync()
            started = clock()
            fn()
            sync()
            times.append(clock() - started)
        ours_s, theirs_s = times if pair % 2 == 0 else times[::-1]
        ours_times.append(ours_s)
        theirs_times.append(theirs_s)
        ratios.append(theirs_s / ours_s)
    return statistics.median(ours_times), statistics.median(theirs_times), statistics.median(ratios)


class Bench:
    def __init__(self, model: LoadedModel, args: argparse.Namespace, guidance: float = 7.5) -> None:
        self.model = model
        self.args = args
        self.guidance = guidance
        self.results: list[JobEvent | ProgressBatch] = []
        self.engine = LaneEngine(model, self.results.append, max_batch_lanes=args.max_batch_lanes, previews=False)
        self._ids = 0
        self._prompts = 0

    def new_prompt(self) -> str:
        """A prompt neither path has seen: the engine keeps recent prompts' text conditionings, which
        a one-image figure repeated on one prompt would time instead of the text encoder."""
        self._prompts += 1
        return f"{self.args.prompt}, take {self._prompts}"

    def request(self, steps: int, seed: int = 0, scheduler: str | None = None, prompt: str = "") -> GenerateRequest:
        return GenerateRequest(
            prompt or self.args.prompt, steps=steps, scheduler=scheduler or self.args.scheduler, seed=seed,
            guidance=self.guidance, width=self.args.size, height=self.args.size,
        )  # fmt: skip

    def run_jobs(self, requests: Sequence[Request]) -> list[JobResult]:
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

    def plain_call(
        self, steps: int, images: int = 1, seed: int = 0, scheduler: str | None = None, prompt: str = ""
    ) -> Any:
        """The family's plain diffusers pipeline call on the same components, with its own scheduler."""
        pipe, family = self.model.pipe, self.model.info.family
        name = scheduler or self.args.scheduler
        fresh = make_scheduler(pipe.scheduler.config, name, seed, flow=family in FLOW_FAMILIES)
        extra: dict[str, Any] = {"requires_safety_checker": False} if family == "sd" else {}
        plain = type(pipe)(**{**pipe.components, "scheduler": fresh}, **extra)
        plain.set_progress_bar_config(disable=True)
        call: dict[str, Any] = {}
        if family == "flux":
            call["max_sequence_length"] = self.model.family.max_sequence_length  # type: ignore[attr-defined]
        return plain(
            prompt or self.args.prompt, num_inference_steps=steps, guidance_scale=self.guidance, height=self.args.size,
            width=self.args.size, num_images_per_prompt=images, output_type="np",
            generator=torch.Generator("cpu").manual_seed(seed), **call,
        ).images  # fmt: skip


def _pixels(result: JobResult) -> np.ndarray:
    return np.asarray(Image.open(BytesIO(result.images[0].png)).convert("RGB"))


def family_row(name: str, args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """One family's figures in one run: compare-steps batched vs sequential, engine vs plain pipeline."""
    model = load_model(name, device=args.device, dtype=args.dtype, cache_dir=args.cache_dir)
    info = model.info
    bench = Bench(model, args, guidance=info.default_guidance)
    steps = args.steps or info.default_steps
    ladder = args.compare or info.compare_steps
    repeats = args.repeats
    bench.run_jobs([bench.request(2)])  # warm-up: lazy init, kernels, allocator
    bench.plain_call(2)

    compare = CompareStepsRequest(args.prompt, steps=ladder, scheduler=args.scheduler, seed=1,
                                  guidance=info.default_guidance, width=args.size, height=args.size)  # fmt: skip
    cells = [bench.request(n, seed=1) for n in ladder]
    batched = timed(model, lambda: bench.run_jobs([compare]), repeats)
    sequential = timed(model, lambda: bench.run_one_by_one(cells), repeats)
    plain_compare = timed(model, lambda: [bench.plain_call(n, seed=1) for n in ladder], repeats)
    ours, plain, single_ratio = interleaved(
        lambda: bench.run_jobs([bench.request(steps, prompt=bench.new_prompt())]),
        lambda: bench.plain_call(steps, prompt=bench.new_prompt()),
        args.pairs,
        sync=lambda: _sync(model),
    )
    [result] = bench.run_jobs([bench.request(steps, seed=7)])
    plain_pixels = (bench.plain_call(steps, seed=7)[0] * 255).round().astype(np.uint8)
    bench.engine.close()
    row = {
        "family": info.family,
        "dtype": str(model.dtype).removeprefix("torch."),
        "size": args.size,
        "guidance": info.default_guidance,
        "steps": steps,
        "ladder": list(ladder),
        "compare_batched_s": batched,
        "compare_sequential_s": sequential,
        "compare_speedup": sequential / batched,
        "compare_plain_s": plain_compare,
        "compare_engine_vs_plain": plain_compare / batched,
        "single_engine_s": ours,
        "single_plain_s": plain,
        "single_engine_it_per_s": steps / ours,
        "single_plain_it_per_s": steps / plain,
        "single_engine_vs_plain": single_ratio,
        "psnr_db": psnr(_pixels(result), plain_pixels),
    }
    return device_name(model), row


def run_families(args: argparse.Namespace) -> Report:
    """A row per family; every ratio within one run on the same weights."""
    rows: dict[str, dict[str, Any]] = {}
    card = ""
    for name in args.families:
        card, rows[name] = family_row(name, args)
    report = Report(device=card, model=",".join(args.families))
    print(f"# model families on {card}, {args.size}x{args.size}, {args.scheduler}, random weights", flush=True)
    header = ("| model | family | steps | compare-steps ladder | batched vs sequential | compare: engine vs plain "
              "| one image: engine vs plain (it/s) | PSNR |")  # fmt: skip
    report.lines += [header, "|---|---|---|---|---|---|---|---|"]
    print(header, flush=True)
    for name, row in rows.items():
        line = (f"| {name} | {row['family']} | {row['steps']} | {','.join(map(str, row['ladder']))} | "
                f"{row['compare_speedup']:.2f}× "
                f"({row['compare_sequential_s']:.2f}s → {row['compare_batched_s']:.2f}s) | "
                f"{row['compare_engine_vs_plain']:.2f}× | {row['single_engine_vs_plain']:.2f}× "
                f"({row['single_engine_it_per_s']:.1f} vs {row['single_plain_it_per_s']:.1f}) | "
                f"{row['psnr_db']:.1f} dB |")  # fmt: skip
        report.lines.append(line)
        print(line, flush=True)
        for key, value in row.items():
            if isinstance(value, float):
                report.figures[f"{name}.{key}"] = value
    report.rows = rows
    return report


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def run(args: argparse.Namespace) -> Report:
    model = load_model(args.model, device=args.device, dtype=args.dtype, cache_dir=args.cache_dir)
    card = device_name(model)
    report = Report(device=card, model=args.model)
    print(f"# {args.model} on {card} ({str(model.dtype).removeprefix('torch.')}), {args.size}x{args.size}, "
          f"{args.scheduler}, {'random weights' if model.is_test_model else 'real weights'}, "
          f"{args.clock} clock", flush=True)  # fmt: skip
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

    networks = NetworkTime(model)

    def compared(key: str, what: str, ours: str, batched_fn: Callable[[], Any], theirs: str,
                 alone_fn: Callable[[], Any]) -> tuple[float, float]:  # fmt: skip
        """Time one batched figure against its one-at-a-time runs; with the networks' own seconds
        inside each (CPU), the ratio they bound it to."""
        batched, batched_net = timed_split(model, batched_fn, repeats, networks)
        alone, alone_net = timed_split(model, alone_fn, repeats, networks)
        report.figures[f"{key}_speedup"] = alone / batched
        report.figures[f"{key}_networks_batched_s"] = batched_net
        report.figures[f"{key}_networks_alone_s"] = alone_net
        report.figures[f"{key}_networks_bound"] = alone_net / batched_net
        bound = "" if math.isnan(batched_net) else (
            f" (of which denoiser + VAE decoder {batched_net:.2f}s and {alone_net:.2f}s: with no host time at all "
            f"{alone_net / batched_net:.2f}x)"
        )  # fmt: skip
        report.add(f"{key}_batched_s", batched, f"{what}: {ours} {batched:.2f}s, {theirs} {alone:.2f}s "
                   f"-> engine {alone / batched:.2f}x as fast{bound}")  # fmt: skip
        return batched, alone

    # compare-steps: one batched job vs six sequential runs of the same cells
    compare = CompareStepsRequest(args.prompt, steps=args.compare, scheduler=args.scheduler, seed=1,
                                  width=args.size, height=args.size)  # fmt: skip
    cells = [bench.request(n, seed=1) for n in args.compare]
    batched, sequential = compared("compare", f"compare-steps {args.compare}", "batched",
                                   lambda: bench.run_jobs([compare]), f"{len(cells)} sequential",
                                   lambda: bench.run_one_by_one(cells))  # fmt: skip
    report.figures["compare_sequential_s"] = sequential

    # compare-schedulers: one batched job (rows = schedulers, columns = step counts) vs its cells one by one
    grid = CompareSchedulersRequest(args.prompt, schedulers=args.grid_schedulers, steps=args.grid_steps, seed=1,
                                    width=args.size, height=args.size)  # fmt: skip
    grid_cells = [bench.request(n, seed=1, scheduler=name) for name, n in zip(grid.lane_schedulers, grid.lane_steps,
                                                                              strict=True)]  # fmt: skip
    bench.run_jobs([CompareSchedulersRequest(args.prompt, schedulers=grid.schedulers, steps=(1, 2), width=args.size,
                                             height=args.size)])  # fmt: skip  # warm-up: each scheduler's first use
    _, grid_alone = compared("scheduler_grid", f"compare-schedulers {', '.join(grid.schedulers)} × {grid.steps} "
                             f"({len(grid_cells)} cells)", "batched", lambda: bench.run_jobs([grid]), "cell by cell",
                             lambda: bench.run_one_by_one(grid_cells))  # fmt: skip
    report.figures["scheduler_grid_cell_by_cell_s"] = grid_alone

    # concurrent /imagine jobs: all at once vs one at a time
    n = args.concurrent
    jobs = [bench.request(steps, seed=i) for i in range(n)]
    together, alone = compared("concurrent", f"{n} concurrent {steps}-step imagine jobs", "batched",
                               lambda: bench.run_jobs(list(jobs)), "one at a time",
                               lambda: bench.run_one_by_one(jobs))  # fmt: skip
    report.figures["concurrent_one_at_a_time_s"] = alone
    report.figures["concurrent_images_per_s"] = n / together

    if args.plain:
        # one image end to end (denoise + decode + PNG) vs the plain pipeline call
        ours, plain, ratio = interleaved(
            lambda: bench.run_jobs([bench.request(steps, prompt=bench.new_prompt())]),
            lambda: bench.plain_call(steps, prompt=bench.new_prompt()),
            args.pairs,
            sync=lambda: _sync(model),
        )
        report.add("single_it_per_s", steps / ours, f"one {steps}-step image: engine {ours:.3f}s "
                   f"({steps / ours:.1f} it/s incl. decode+PNG), plain pipeline {plain:.3f}s "
                   f"({steps / plain:.1f} it/s) -> engine {ratio:.2f}x as fast "
                   f"(median of {args.pairs} back-to-back pairs)")  # fmt: skip
        report.figures["plain_single_it_per_s"] = steps / plain
        report.figures["single_engine_vs_plain"] = ratio

        # the same, with the plain image encoded to PNG as the engine's is (a bot must post a file)
        def plain_png() -> bytes:
            pixels = (bench.plain_call(steps, prompt=bench.new_prompt())[0] * 255).round().astype(np.uint8)
            return encode_png(Image.fromarray(pixels))

        ours, plain, ratio = interleaved(
            lambda: bench.run_jobs([bench.request(steps, prompt=bench.new_prompt())]),
            plain_png,
            args.pairs,
            sync=lambda: _sync(model),
        )
        report.add("single_engine_vs_plain_png", ratio, f"one {steps}-step image, the plain pipeline's also "
                   f"encoded to PNG: engine {ours:.3f}s, plain + PNG {plain:.3f}s -> engine {ratio:.2f}x as fast "
                   f"(median of {args.pairs} back-to-back pairs)")  # fmt: skip

        plain_many = timed(model, lambda: bench.plain_call(steps, images=n), repeats)
        report.add("plain_batch_images_per_s", n / plain_many, f"plain pipeline, {n} images in one call: "
                   f"{plain_many:.2f}s ({n / plain_many:.2f} images/s); engine {n / together:.2f} images/s "
                   f"-> engine {plain_many / together:.2f}x as fast")  # fmt: skip

        plain_compare = timed(model, lambda: [bench.plain_call(k, seed=1) for k in args.compare], repeats)
        report.add("plain_compare_s", plain_compare, f"compare-steps as six plain pipeline calls: {plain_compare:.2f}s "
                   f"-> engine {plain_compare / batched:.2f}x as fast")  # fmt: skip

        # images equal the plain path's (within the dtype's tolerance)
        [result] = bench.run_jobs([bench.request(steps, seed=7)])
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
    parser.add_argument("--steps", type=int, default=None, help="default: 30; with --families the model's own")
    parser.add_argument("--scheduler", default="Euler")
    parser.add_argument("--compare", type=parse_step_list, default=None,
                        help="e.g. 5,10,20 (default: 5..50; with --families the model's own ladder)")  # fmt: skip
    parser.add_argument("--grid-schedulers", type=lambda text: tuple(n.strip() for n in text.split(",") if n.strip()),
                        default=DEFAULT_GRID_SCHEDULERS, help="compare-schedulers rows, comma-separated")  # fmt: skip
    parser.add_argument("--grid-steps", type=parse_step_list, default=(5, 20, 50),
                        help="compare-schedulers columns (default: 5,20,50)")  # fmt: skip
    parser.add_argument("--families", type=lambda text: [name.strip() for name in text.split(",") if name.strip()],
                        default=None, help="a row per model, e.g. tiny,tiny-sdxl,tiny-flux,tiny-sd3")  # fmt: skip
    parser.add_argument("--concurrent", type=int, default=8)
    parser.add_argument("--max-batch-lanes", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pairs", type=int, default=7,
                        help="one image, engine vs plain: back-to-back pairs to take the median of")  # fmt: skip
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall seconds, or this process's CPU seconds (CPU runs on a shared box)")  # fmt: skip
    parser.add_argument("--torch-threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--prompt", default="a lighthouse on a cliff at dusk, oil painting")
    parser.add_argument("--no-plain", dest="plain", action="store_false", help="skip the plain pipeline figures")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--compile", action="store_true", help="torch.compile the engine's UNet (CUDA graphs)")
    parser.add_argument("--buckets", type=parse_step_list, default=None, help="batch buckets to compile, e.g. 1,8,16")
    parser.add_argument("--fuse-qkv", action="store_true", help="fuse attention QKV projections (both paths)")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    parser.add_argument("--overhead", action="store_true",
                        help="host overhead only: the denoiser returns at once (see bench_overhead.py)")  # fmt: skip
    parser.add_argument(
        "--sizes",
        type=lambda text: [int(n) for n in text.split(",")],
        default=None,
        help="--overhead: image sizes (default 64,512)",
    )
    add_overhead_arguments(parser)
    args = parser.parse_args(argv)
    global clock
    clock = CLOCKS[args.clock]
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    if args.overhead:
        args.sizes = list(args.sizes or ([args.size] if args.size else [64, 512]))
        run_overhead(args)
        return 0
    if args.families:
        args.size = args.size or 256
        report = run_families(args)
    else:
        args.size = args.size or (256 if args.model == "tiny" else 512)
        args.steps = args.steps or 30
        args.compare = args.compare or DEFAULT_COMPARE_STEPS
        report = run(args)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        payload = {"device": report.device, "model": report.model, "args": {k: str(v) for k, v in vars(args).items()},
                   "figures": report.figures, "rows": report.rows, "lines": report.lines}  # fmt: skip
        args.out.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

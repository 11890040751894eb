"""The lane engine's host overhead alone: the denoiser is replaced by one that returns at once.

What is left of an engine iteration is everything the host does around a denoiser call: building
the batch's inputs, guidance, the scheduler steps of every lane, progress events (pickled as the
worker's pipe pickles them) and previews. On a GPU with a CUDA-graph UNet that is what adds onto
every step, so it must be small next to the call (~6.4 ms for 2 rows of SD 1.5 on an H200).

    python benchmarks/bench_overhead.py                       # CPU, tiny model, SD 1.5-sized latents
    python benchmarks/bench_overhead.py --device cuda --out benchmarks/results/<card>-overhead.json
    python benchmarks/bench_engine.py --overhead ...          # the same, as a mode of the main benchmark

Only the benchmark stubs the denoiser; the equality tests always run the real one.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from multiprocessing.reduction import ForkingPickler
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.machine import device_name
from inference.engine.lane_engine import LaneEngine
from inference.engine.lanes import Lane
from inference.models.loading import LoadedModel, load_model
from inference.protocol import JobEvent, JobProgress
from inference.requests import GenerateRequest

try:
    from inference.protocol import ProgressBatch
except ImportError:  # an engine from before progress batches
    ProgressBatch = JobProgress  # type: ignore[misc,assignment]

SCHEDULERS = ("Euler", "DPM++ 2M Karras", "Euler a")
LANES = (1, 8, 16, 32)


def instant_denoiser(sample: torch.Tensor, timestep: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor]:
    """A denoiser that costs nothing: its "prediction" is its input (no copy, no kernel)."""
    return (sample,)


class StubEngine(LaneEngine):
    """The real engine with the denoiser call replaced by `instant_denoiser` (benchmark only)."""

    def _denoiser_for(self, lanes: list[Lane]) -> tuple[Any, int]:
        return instant_denoiser, len(lanes)


class Wire:
    """Counts what would cross the worker's pipe: messages and their pickled bytes."""

    def __init__(self) -> None:
        self.messages = 0
        self.bytes = 0
        self.progress = 0

    def __call__(self, event: JobEvent | ProgressBatch) -> None:
        self.messages += 1
        self.bytes += len(ForkingPickler.dumps(event))
        if isinstance(event, JobProgress):
            self.progress += 1
        elif isinstance(event, ProgressBatch):
            self.progress += len(event.events)


def _sync(model: LoadedModel) -> None:
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)


def measure(model: LoadedModel, scheduler: str, lanes: int, size: int, args: argparse.Namespace) -> dict[str, float]:
    """Median over repeats of one engine iteration with `lanes` single-lane jobs sharing it."""
    per_iteration, messages, nbytes, progress = [], [], [], []
    steps = args.warmup + args.max_iterations + 2  # nobody finishes inside the timed window
    for repeat in range(args.repeats):
        wire = Wire()
        engine = StubEngine(model, wire, max_batch_lanes=lanes, previews=args.previews, **args.engine_options)
        for job in range(lanes):
            engine.add_job(f"job-{job}", GenerateRequest("a lighthouse", steps=steps, scheduler=scheduler,
                                                         seed=1000 * repeat + job, guidance=7.5,
                                                         width=size, height=size))  # fmt: skip
        for _ in range(args.warmup):
            engine.step()
        wire.messages = wire.bytes = wire.progress = 0
        _sync(model)
        started = time.perf_counter()
        iterations = 0
        # At least `iterations`, and at least `min_seconds` so that previews (one per job per 1.5 s)
        # weigh in as they do in a long run.
        while iterations < args.max_iterations and (
            iterations < args.iterations or time.perf_counter() - started < args.min_seconds
        ):
            assert engine.step() == lanes
            iterations += 1
        _sync(model)
        per_iteration.append((time.perf_counter() - started) / iterations)
        messages.append(wire.messages / iterations)
        nbytes.append(wire.bytes / iterations)
        progress.append(wire.progress / iterations)
        engine.close()
    iteration = statistics.median(per_iteration)
    return {
        "iteration_us": iteration * 1e6,
        "lane_step_us": iteration * 1e6 / lanes,
        "messages_per_iteration": statistics.median(messages),
        "messages_per_job_iteration": statistics.median(messages) / lanes,
        "progress_per_iteration": statistics.median(progress),
        "bytes_per_iteration": statistics.median(nbytes),
        "bytes_per_lane_step": statistics.median(nbytes) / lanes,
    }


def _engine_options(args: argparse.Namespace) -> dict[str, Any]:
    """Switches that isolate one change (only where the engine has them: the BEFORE run has none)."""
    import inspect

    accepted = inspect.signature(LaneEngine.__init__).parameters
    return {"batched_steps": False} if args.per_lane_steps and "batched_steps" in accepted else {}


def run_overhead(args: argparse.Namespace) -> dict[str, Any]:

    args.engine_options = _engine_options(args)
    if args.threads:
        # On a GPU these elementwise ops are asynchronous kernel launches; on a small shared CPU,
        # OpenMP barriers across a busy sibling core add milliseconds of noise to every op.
        torch.set_num_threads(args.threads)
    model = load_model(args.model, device=args.device, dtype=args.dtype, cache_dir=args.cache_dir)
    card = device_name(model)
    sizes = ", ".join(f"{size}x{size} ({size // 8}x{size // 8} latents)" for size in args.sizes)
    print(f"# host overhead of the lane engine on {card}: {args.model} ({str(model.dtype).removeprefix('torch.')}), "
          f"{sizes}, {torch.get_num_threads()} torch thread(s), CFG 7.5, denoiser returns at once, "
          f"previews {'on' if args.previews else 'off'}; median of {args.repeats} repeats of "
          f"{args.iterations}+ iterations, at least {args.min_seconds:g}s each", flush=True)  # fmt: skip
    header = ("| scheduler | image | lanes | µs per iteration | µs per lane-step | messages per iteration "
              "| bytes per iteration |")  # fmt: skip
    lines = [header, "|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    rows: dict[str, dict[str, float]] = {}
    for size in args.sizes:
        for scheduler in args.schedulers:
            for lanes in args.lanes:
                row = measure(model, scheduler, lanes, size, args)
                rows[f"{scheduler}@{lanes}@{size}"] = row
                cells = [scheduler, f"{size}²", lanes, f"{row['iteration_us']:.0f}", f"{row['lane_step_us']:.0f}",
                         f"{row['messages_per_iteration']:.2f}", f"{row['bytes_per_iteration']:.0f}"]  # fmt: skip
                line = "| " + " | ".join(map(str, cells)) + " |"
                lines.append(line)
                print(line, flush=True)
    payload = {"device": card, "model": args.model, "engine_options": args.engine_options,
               "args": {k: str(v) for k, v in vars(args).items()}, "rows": rows, "lines": lines}  # fmt: skip
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(payload, indent=2) + "\n")
    return payload


def add_arguments(parser: argparse.ArgumentParser, *, sizes: bool = False) -> None:
    if sizes:
        parser.add_argument("--sizes", type=lambda text: [int(n) for n in text.split(",")], default=[64, 512],
                            help="image sizes: 64 (8x8 latents) leaves the host's work alone; 512 (SD 1.5's "
                            "64x64 latents) adds the elementwise arithmetic a GPU would run")  # fmt: skip
    parser.add_argument("--overhead-schedulers", dest="schedulers", default=",".join(SCHEDULERS),
                        type=lambda text: [name.strip() for name in text.split(",") if name.strip()])  # fmt: skip
    parser.add_argument("--lanes", type=lambda text: [int(n) for n in text.split(",")], default=list(LANES))
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--min-seconds", type=float, default=0.0, help="time at least this long per repeat")
    parser.add_argument("--max-iterations", type=int, default=400)
    parser.add_argument("--previews", action="store_true", help="the worker's 1.5 s previews (use --min-seconds 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: leave torch's default)")
    parser.add_argument("--per-lane-steps", action="store_true",
                        help="every lane through its scheduler's own step (measures the batched steps)")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--out", type=Path, default=None)
    add_arguments(parser, sizes=True)
    run_overhead(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

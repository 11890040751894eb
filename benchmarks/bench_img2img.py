"""Benchmark img2img through the lane engine against diffusers' `StableDiffusionImg2ImgPipeline`, one call per image.

Every figure is a ratio measured in one run on the same weights, the two paths timed back to back in
pairs (the order flipped every pair), so that it holds on a noisy shared machine:

    python benchmarks/bench_img2img.py                                            # CPU, tiny random-weight model
    python benchmarks/bench_img2img.py --out benchmarks/results/cpu-img2img.json
    python benchmarks/bench_img2img.py --device cuda --model sd15-arch --size 512  # GPU, SD1.5 architecture

Figures:
- img2img mix: N img2img jobs (strengths 0.3 to 0.9, a seed and prompt each) added to the engine at once,
  against N plain img2img pipeline calls one after another;
- mixed with text to image: half of them img2img, half text to image, in the engine at once, against the
  plain img2img and text-to-image pipelines one call each;
- a /compare-strength grid (one job, a lane per strength) against one plain img2img call per strength;
- PSNR of one engine image against the plain pipeline's (same seed, strength, steps and scheduler).
Both paths decode with the VAE; only the engine's also encodes PNGs.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import bench_engine
from benchmarks.bench_engine import CLOCKS, interleaved, psnr
from benchmarks.machine import device_name
from inference.engine.lane_engine import LaneEngine
from inference.imaging import encode_png
from inference.models.loading import LoadedModel, load_model
from inference.protocol import JobEvent, JobResult, ProgressBatch
from inference.requests import (
    DEFAULT_COMPARE_STRENGTHS,
    CompareStrengthRequest,
    GenerateRequest,
    Request,
    img2img_steps,
)
from inference.schedulers import make_scheduler

MIX_STRENGTHS = (0.3, 0.45, 0.6, 0.75, 0.9)


def input_image(size: int) -> Image.Image:
    """A structured picture to start from: gradients and a disc."""
    y, x = np.mgrid[0:size, 0:size]
    disc = (x - size / 2) ** 2 + (y - size / 2) ** 2 < (size / 3) ** 2
    pixels = np.stack([255 * x / (size - 1), 255 * y / (size - 1), np.where(disc, 220, 40)], axis=-1)
    return Image.fromarray(pixels.astype(np.uint8))


class Img2ImgBench:
    def __init__(self, model: LoadedModel, args: argparse.Namespace) -> None:
        self.model, self.args = model, args
        self.events: list[JobEvent | ProgressBatch] = []
        self.engine = LaneEngine(model, self.events.append, max_batch_lanes=args.max_batch_lanes, previews=False)
        self.image = input_image(args.size)
        self.png = encode_png(self.image)
        self._ids = 0
        self._takes = 0
        # Built once on the same components, as a user of diffusers would; each call gets a fresh scheduler.
        self.pipelines = {
            kind: cls.from_pipe(model.pipe)
            for kind, cls in (("img2img", StableDiffusionImg2ImgPipeline), ("txt2img", StableDiffusionPipeline))
        }
        for pipeline in self.pipelines.values():
            pipeline.set_progress_bar_config(disable=True)

    def prompts(self, count: int) -> list[str]:
        """Prompts neither path has seen: the engine keeps recent text conditionings, the plain pipeline doesn't."""
        self._takes += 1
        return [f"{self.args.prompt}, take {self._takes}.{i}" for i in range(count)]

    def img2img(self, prompt: str, seed: int, strength: float) -> GenerateRequest:
        size, steps, scheduler = self.args.size, self.args.steps, self.args.scheduler
        return GenerateRequest(prompt, steps=steps, scheduler=scheduler, seed=seed, width=size, height=size,
                               image=self.png, strength=strength)  # fmt: skip

    def txt2img(self, prompt: str, seed: int) -> GenerateRequest:
        size = self.args.size
        return GenerateRequest(prompt, steps=self.args.steps, scheduler=self.args.scheduler, seed=seed, width=size,
                               height=size)  # fmt: skip

    def mix(self, img2img: int, txt2img: int) -> list[GenerateRequest]:
        prompts = self.prompts(img2img + txt2img)
        images = [self.img2img(prompts[i], i, MIX_STRENGTHS[i % len(MIX_STRENGTHS)]) for i in range(img2img)]
        return images + [self.txt2img(prompts[img2img + i], img2img + i) for i in range(txt2img)]

    def run_jobs(self, requests: Sequence[Request]) -> list[JobResult]:
        """Add every request at once and run the engine until every image is encoded."""
        ids = []
        for request in requests:
            self._ids += 1
            ids.append(f"img2img-{self._ids}")
            self.engine.add_job(ids[-1], request)
        self.engine.run_until_idle()
        results = {event.job_id: event for event in self.events if isinstance(event, JobResult)}
        self.events.clear()
        return [results[job_id] for job_id in ids]

    def plain(self, request: GenerateRequest) -> np.ndarray:
        """The plain diffusers pipeline for this one request (img2img or text to image), with its own scheduler."""
        plain = self.pipelines["img2img" if request.image else "txt2img"]
        plain.scheduler = make_scheduler(self.model.pipe.scheduler.config, request.scheduler, request.seed, flow=False)
        extra: dict[str, Any] = {"image": self.image, "strength": request.strength} if request.image else {}
        if not request.image:
            extra |= {"height": request.height, "width": request.width}
        return plain(
            request.prompt, num_inference_steps=request.steps, guidance_scale=request.guidance, output_type="np",
            generator=torch.Generator("cpu").manual_seed(request.seed), **extra,
        ).images[0]  # fmt: skip

    def plain_one_by_one(self, requests: Sequence[GenerateRequest]) -> None:
        for request in requests:
            self.plain(request)


def _grid_cells(grid: CompareStrengthRequest) -> list[GenerateRequest]:
    """The strength grid's cells as the plain requests that make the same images."""
    return [
        GenerateRequest(
            grid.prompt,
            steps=steps,
            scheduler=grid.scheduler,
            seed=grid.seed,
            width=grid.width,
            height=grid.height,
            image=grid.image,
            strength=strength,
        )
        for steps, strength in zip(grid.lane_steps, grid.lane_strengths, strict=True)
    ]


def run(args: argparse.Namespace) -> dict[str, Any]:
    model = load_model(args.model, device=args.device, dtype=args.dtype, cache_dir=args.cache_dir)
    if model.info.family != "sd":
        raise SystemExit(f"{args.model} is a {model.info.family} model; this benchmark compares SD's img2img pipeline")
    bench = Img2ImgBench(model, args)
    sync: Callable[[], None] = (lambda: torch.cuda.synchronize(model.device)) if model.device.type == "cuda" else (
        lambda: None
    )  # fmt: skip
    figures: dict[str, float] = {}
    lines: list[str] = []

    def say(text: str) -> None:
        lines.append(text)
        print(text, flush=True)

    # Warm-up: lazy init, kernels, the allocator; and the equality of the two paths on one image.
    (warm,) = bench.mix(1, 0)
    ours = np.asarray(Image.open(io.BytesIO(bench.run_jobs([warm])[0].images[0].png)).convert("RGB"))
    theirs = (bench.plain(warm) * 255).round().astype(np.uint8)
    figures["psnr_db"] = psnr(ours, theirs)
    say(f"PSNR engine vs plain StableDiffusionImg2ImgPipeline, one image: {figures['psnr_db']:.1f} dB")

    lanes = args.lanes
    steps_run = sum(img2img_steps(args.steps, s, flow=False) for s in (MIX_STRENGTHS * lanes)[:lanes])
    cases: list[tuple[str, str, Callable[[], list[GenerateRequest]]]] = [
        ("img2img_mix", f"{lanes} img2img jobs (strengths {', '.join(map(str, MIX_STRENGTHS))}; {steps_run} steps run)",
         lambda: bench.mix(lanes, 0)),
        ("mixed_txt2img", f"{lanes // 2} img2img + {lanes - lanes // 2} text-to-image jobs",
         lambda: bench.mix(lanes // 2, lanes - lanes // 2)),
    ]  # fmt: skip
    for key, what, make in cases:

        def ours_fn(make: Callable[[], list[GenerateRequest]] = make) -> None:
            bench.run_jobs(make())

        def theirs_fn(make: Callable[[], list[GenerateRequest]] = make) -> None:
            bench.plain_one_by_one(make())

        ours_s, theirs_s, ratio = interleaved(ours_fn, theirs_fn, args.pairs, sync)
        figures[f"{key}_speedup"] = ratio
        figures[f"{key}_engine_s"], figures[f"{key}_plain_s"] = ours_s, theirs_s
        say(f"{what}: engine at once {ours_s:.2f} s vs plain pipelines one by one {theirs_s:.2f} s = {ratio:.2f}×")

    def grid() -> CompareStrengthRequest:
        (prompt,) = bench.prompts(1)
        return CompareStrengthRequest(prompt, strengths=DEFAULT_COMPARE_STRENGTHS, steps=(args.steps,),
                                      scheduler=args.scheduler, seed=1, width=args.size, height=args.size,
                                      image=bench.png)  # fmt: skip

    ours_s, theirs_s, ratio = interleaved(
        lambda: bench.run_jobs([grid()]), lambda: bench.plain_one_by_one(_grid_cells(grid())), args.pairs, sync
    )
    figures["strength_grid_speedup"] = ratio
    figures["strength_grid_engine_s"], figures["strength_grid_plain_s"] = ours_s, theirs_s
    strengths = ", ".join(f"{s:g}" for s in DEFAULT_COMPARE_STRENGTHS)
    cells = len(DEFAULT_COMPARE_STRENGTHS)
    say(f"compare-strength {strengths} at {args.steps} steps: one job {ours_s:.2f} s vs {cells} plain img2img calls "
        f"{theirs_s:.2f} s = {ratio:.2f}×")  # fmt: skip
    bench.engine.close()
    return {"device": device_name(model), "model": args.model, "figures": figures, "lines": lines}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="an SD 1.x/2.x model: tiny, sd15-arch, a folder or a hub id")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--scheduler", default="Euler")
    parser.add_argument("--lanes", type=int, default=8, help="jobs in the img2img mix (default: 8)")
    parser.add_argument("--max-batch-lanes", type=int, default=16)
    parser.add_argument("--pairs", type=int, default=3, help="back-to-back pairs per figure to take the median of")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall seconds, or this process's CPU seconds (CPU runs on a shared box)")  # fmt: skip
    parser.add_argument("--prompt", default="a lighthouse on a cliff at dusk, oil painting")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    bench_engine.clock = CLOCKS[args.clock]  # `interleaved` reads the clock from its module
    report = run(args)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        report["args"] = {key: str(value) for key, value in vars(args).items()}
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

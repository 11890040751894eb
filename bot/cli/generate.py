"""`stepgrid imagine`, `upscale` and the `compare-*` grids offline: the request its arguments ask for
(`bot.cli.arguments`) run through the same queue and worker the bot uses under a progress bar, its outputs
written where asked, or rescued (`bot.cli.outputs`), and a line that says what ran."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import TextIO

from bot.cli.arguments import (
    check_before_loading,
    check_output_and_model,
    checked_hardware,
    cli_defaults,
    options_from_args,
    request_from_args,
    select_models,
)
from bot.cli.outputs import TEST_MODEL_NOTE, OutputLost, comparison_grid, output_paths, save_outputs
from bot.cli.safety import ALL_WITHHELD_EXIT, cli_checker, screen
from bot.config import Settings
from bot.errors import InvalidOption
from bot.job_requests import RequestOptions, build_request, checked, requested_loras
from inference.protocol import JobFailed, JobProgress, JobQueued, JobResult
from inference.queues.base import ModelsUnavailable, WorkerUnavailable
from inference.queues.local import LocalJobQueue
from inference.registry import ModelSpec, RegistryError
from inference.requests import GenerateRequest, InvalidRequest, Request


class ProgressBar:
    """One line redrawn in place, only when what it shows changes; silent when not a terminal."""

    def __init__(self, out: TextIO, width: int = 30) -> None:
        self.out = out
        self.width = width
        self._shown = ""

    def update(self, done: int, total: int) -> None:
        filled = round(self.width * done / total) if total else self.width
        text = f"[{'#' * filled}{'.' * (self.width - filled)}] {done}/{total} steps"
        if text != self._shown and self.out.isatty():
            self._shown = text
            self.out.write(f"\r{text}")
            self.out.flush()


async def generate(
    options: RequestOptions | Callable[[int], RequestOptions],
    settings: Settings,
    specs: Sequence[ModelSpec],
    *,
    out: TextIO = sys.stderr,
    safety_checker: str = "none",
) -> tuple[Request, JobResult, str]:
    """Run what `options` ask through a LocalJobQueue and its spawned worker loading `specs`,
    drawing a progress bar. Options left out take the loaded model's defaults, decided where the
    bot decides them. Returns the request as run, its result and the device it ran on."""
    # The files are written for the person at the terminal, who sees them first: no image checker unless
    # `--safety` asks for one (`safety_checker`; it runs in the worker as the bot's does, docs/safety.md).
    config = dataclasses.replace(settings.worker_config(), model="", models=tuple(specs), safety_checker=safety_checker)
    queue = LocalJobQueue(config, hang_seconds=settings.worker_hang_seconds)
    await queue.start()
    try:
        out.write(f"loading {', '.join(spec.name for spec in specs)} ...\n")
        await queue.wait_ready()
        info = queue.worker_info
        if info is not None:
            note = f" — {TEST_MODEL_NOTE}" if info.is_test_model else ""
            out.write(f"model {info.model} on {info.device} ({info.dtype}){note}\n")
        if info is not None and info.safety_checker != "none":
            out.write(f"image checker {info.safety_checker}: flags a score of {settings.safety_threshold:g} or more\n")
        for missing in info.unavailable if info else ():
            out.write(f"model {missing.name} is unavailable: {missing.message}\n")
        model = queue.model_info("")
        if callable(options):  # an input image, normalised for the loaded model's size multiple
            options = options(model.size_multiple)
        loras = [name for name, _ in requested_loras(options)[1]]
        request = checked(build_request(options, cli_defaults(settings, specs, model, loras)))
        job_id = queue.submit(request, user_id="cli")
        bar = ProgressBar(out)
        async for event in queue.events(job_id):
            if isinstance(event, JobQueued) and event.position > 1:
                out.write(f"queued at position {event.position}\n")
            elif isinstance(event, JobProgress):
                bar.update(event.job_step, event.job_total)
            elif isinstance(event, JobResult):
                out.write("\n")
                return request, event, info.device if info is not None else "the worker's device"
            elif isinstance(event, JobFailed):
                out.write("\n")
                raise GenerationFailed(event.message)
        raise GenerationFailed("the job ended without a result")
    finally:
        await queue.close()


class GenerationFailed(RuntimeError):
    pass


def generate_command(args: argparse.Namespace, settings: Settings) -> int:
    try:
        request_from_args(args)  # what can be refused before loading anything
        args.device, args.dtype = checked_hardware(args)
        check_output_and_model(args)
        specs = select_models(args.model, settings)
        check_before_loading(args, settings, specs)
        checker = cli_checker(settings) if getattr(args, "safety", False) else "none"
    except (InvalidOption, RegistryError) as error:
        print(f"stepgrid: {error}", file=sys.stderr)
        return 2
    settings = settings.model_copy(update={"device": args.device, "dtype": args.dtype})
    quiet_worker(args)
    started = time.perf_counter()
    try:
        request, result, device = asyncio.run(
            generate(partial(options_from_args, args), settings, specs, safety_checker=checker)
        )
    except (InvalidRequest, InvalidOption, ModelsUnavailable) as error:  # e.g. a scheduler or size this
        print(f"stepgrid: {error}", file=sys.stderr)  # model can't do, or a --model that doesn't load
        return 2
    except (GenerationFailed, WorkerUnavailable) as error:
        print(f"stepgrid: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stepgrid: interrupted; nothing was written.", file=sys.stderr)
        return 130
    film = getattr(args, "film", None)
    targets = output_paths(request, args.output, film)
    screened = screen(request, result, targets, settings.safety_threshold)
    result = screened.result  # a grid's flagged cells are neutral tiles now
    replaced = [path for path in targets if path.exists()]
    grid = None if isinstance(request, GenerateRequest) else comparison_grid(request, result, device)
    try:
        png = None if grid is None else grid.png
        paths, problem = save_outputs(request, result, args.output, film, grid=png, withheld=screened.withheld)
    except OutputLost as error:
        print(f"stepgrid: {error}", file=sys.stderr)
        return 1
    if problem is not None:
        print(f"stepgrid: {problem}; saved to {', '.join(map(str, paths))} instead.", file=sys.stderr)
        return 1
    if not paths:
        print(screened.line)
        return ALL_WITHHELD_EXIT
    replaced = [path for path in replaced if path in paths]
    written = [image for index, image in enumerate(result.images) if index not in screened.withheld]
    steps = ",".join(str(steps) for steps in sorted({image.steps for image in written}))
    if isinstance(request, GenerateRequest) and request.auto_steps:
        steps = f"auto → {','.join(str(image.steps_run) for image in written)} (at most {request.steps})"
    seeds = ",".join(str(seed) for seed in dict.fromkeys(image.seed for image in written))
    note = f" ({TEST_MODEL_NOTE})" if result.is_test_model else ""
    truncated = " The prompt was cut to the model's token limit." if result.prompt_truncated else ""
    print(
        f"wrote {', '.join(map(str, paths))}: {request.scheduler}, steps {steps}, seed {seeds}, "
        f"{time.perf_counter() - started:.1f}s in all{note}.{truncated}{_film_note(request, result)}"
    )
    if replaced:
        print(f"replaced the file{'s' if len(replaced) > 1 else ''} already there: {', '.join(map(str, replaced))}.")
    if screened.line:
        print(screened.line)
    if grid is not None:
        print(grid.summary)
    return 0


def _film_note(request: Request, result: JobResult) -> str:
    """A sentence saying the film's frames are smaller than the image (the worker caps them), or ""."""
    from bot.pictures.film import downscale_note, frame_size

    frames = result.images[0].frames if len(result.images) == 1 else ()
    note = downscale_note(frame_size(frames), (request.width, request.height)) if frames else None
    return f" The film's frames are {note}." if note else ""


def quiet_worker(args: argparse.Namespace) -> None:
    if not args.verbose:
        # Read by the spawned worker; every failure still reaches the user as one line from here.
        os.environ.setdefault("STEPGRID_LOG_LEVEL", "CRITICAL")

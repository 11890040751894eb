"""The `stepgrid` command: run the bot, or generate images offline through the same worker."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn, TextIO

from pydantic import ValidationError

from bot.config import Settings
from bot.errors import InvalidOption
from bot.job_requests import RequestDefaults, RequestOptions, build_request, checked
from inference.protocol import (
    SCHEDULER_NAMES,
    CompareStepsRequest,
    InvalidRequest,
    JobFailed,
    JobProgress,
    JobQueued,
    JobResult,
    ModelInfo,
    Request,
)
from inference.queue import LocalJobQueue, WorkerUnavailable
from inference.registry import RegistryError, models_from_setting

TEST_MODEL_NOTE = "random-weight test model: its images are noise, not art"


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line and exits 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def _add_generation_options(parser: argparse.ArgumentParser, settings: Settings) -> None:
    parser.add_argument("prompt", help="what to draw")
    parser.add_argument(
        "--scheduler",
        default=None,
        help=f"one of {', '.join(SCHEDULER_NAMES)} that the model can run (default: the model's own)",
    )
    parser.add_argument("--seed", type=int, default=-1, help="0 to 4294967295; -1 or left out: random")
    parser.add_argument("--negative", default="", help="negative prompt: what to keep out of the image")
    parser.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="classifier-free guidance, 0-30 (default: the model's own)",
    )
    parser.add_argument(
        "--size",
        default=str(RequestDefaults.width),
        help="512 or WIDTHxHEIGHT, multiples of 8 from 256 to 1024 (default: %(default)s)",
    )
    parser.add_argument(
        "--model",
        default=settings.model,
        help="hub id, local diffusers folder, registry file (.toml), or a random-weight test model: "
        "tiny, tiny-sdxl, tiny-flux, tiny-flux-dev, tiny-sd3 (default: %(default)s)",
    )
    parser.add_argument("--device", default=settings.device, help="auto, cpu, cuda, cuda:1, ... (default: %(default)s)")
    parser.add_argument(
        "--dtype", default=settings.dtype, help="auto, float32, float16, bfloat16 (default: %(default)s)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show the worker's log")


def build_parser(settings: Settings) -> argparse.ArgumentParser:
    parser = _Parser(prog="stepgrid", description="A Discord bot for Stable Diffusion that shows what steps do.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = "start the Discord bot and its GPU worker (settings from STEPGRID_* variables or .env)"
    commands.add_parser("run", help=run, description=run)

    imagine = commands.add_parser("imagine", help="generate images offline", description="Generate images offline.")
    _add_generation_options(imagine, settings)
    imagine.add_argument("--steps", type=int, default=None, help="1-150 (default: the model's own)")
    imagine.add_argument("--count", type=int, default=1, help="1-4 images, seeded seed, seed+1, ... (default: 1)")
    imagine.add_argument(
        "-o", "--output", type=Path, required=True, help="PNG file to write; with --count N: NAME-1.png ... NAME-N.png"
    )

    about = "One labelled grid of the same prompt and seed at several step counts."
    compare = commands.add_parser("compare-steps", help=about, description=about)
    _add_generation_options(compare, settings)
    compare.add_argument(
        "--steps",
        default=None,
        help="2 to 12 step counts, comma-separated (default: the model's own ladder, e.g. 1,2,3,4,6,8 for a "
        "few-step model, 5,10,20,30,40,50 for SD 1.5)",
    )
    compare.add_argument("-o", "--output", type=Path, required=True, help="PNG file to write the grid to")

    db = commands.add_parser("db", help="database maintenance")
    db_commands = db.add_subparsers(dest="db_command", metavar="upgrade", required=True, parser_class=_Parser)
    db_commands.add_parser("upgrade", help="apply migrations to the configured database")

    from bot.fleet import add_fleet_commands

    add_fleet_commands(commands, settings)

    usage = commands.add_parser("usage", help="export the usage ledger")
    usage.add_argument("--csv", action="store_true", required=True, help="one CSV row per job on stdout")
    return parser


# Options left out take the model's own default once the worker has said what it is.
MODEL_DEFAULTS = ("scheduler", "guidance", "steps")


def request_from_args(args: argparse.Namespace) -> Request:
    """Build and check the request with the commands' builder; raises InvalidOption with a one-line reason."""
    grid = args.command == "compare-steps"
    options = RequestOptions(
        prompt=args.prompt,
        negative_prompt=args.negative,
        scheduler=args.scheduler,
        seed=None if args.seed == -1 else args.seed,
        guidance=args.guidance,
        size=args.size,
        steps=None if grid else args.steps,
        count=None if grid else args.count,
        compare_steps=args.steps if grid else None,
        grid=grid,
    )
    return checked(build_request(options, RequestDefaults()))


def with_model_defaults(request: Request, model: ModelInfo, unset: set[str]) -> Request:
    """Fill the options left out with the model's defaults (its scheduler, guidance, steps or ladder)."""
    changes: dict[str, object] = {}
    if "scheduler" in unset:
        changes["scheduler"] = model.default_scheduler
    if "guidance" in unset:
        changes["guidance"] = model.default_guidance
    if "steps" in unset:
        changes["steps"] = model.compare_steps if isinstance(request, CompareStepsRequest) else model.default_steps
    return dataclasses.replace(request, **changes)  # type: ignore[arg-type]


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
    request: Request, settings: Settings, *, out: TextIO = sys.stderr, unset: set[str] | None = None
) -> tuple[Request, JobResult]:
    """Run one request through a LocalJobQueue and its spawned worker, drawing a progress bar;
    options named in `unset` take the model's defaults. Returns the request as run and its result."""
    queue = LocalJobQueue(settings.worker_config(), hang_seconds=settings.worker_hang_seconds)
    await queue.start()
    try:
        out.write(f"loading {settings.model} ...\n")
        await queue.wait_ready()
        info = queue.worker_info
        if info is not None:
            note = f" — {TEST_MODEL_NOTE}" if info.is_test_model else ""
            out.write(f"model {info.model} on {info.device} ({info.dtype}){note}\n")
        for missing in info.unavailable if info else ():
            out.write(f"model {missing.name} is unavailable: {missing.message}\n")
        request = with_model_defaults(request, queue.model_info(request.model), unset or set())
        job_id = queue.submit(request, user_id="cli")
        bar = ProgressBar(out)
        async for event in queue.events(job_id):
            if isinstance(event, JobQueued) and event.position > 1:
                out.write(f"queued at position {event.position}\n")
            elif isinstance(event, JobProgress):
                bar.update(event.job_step, event.job_total)
            elif isinstance(event, JobResult):
                out.write("\n")
                return request, event
            elif isinstance(event, JobFailed):
                out.write("\n")
                raise GenerationFailed(event.message)
        raise GenerationFailed("the job ended without a result")
    finally:
        await queue.close()


class GenerationFailed(RuntimeError):
    pass


def check_output_and_model(args: argparse.Namespace) -> None:
    """Refuse, before loading anything, an output that can't be written or a model folder that isn't there."""
    output: Path = args.output
    if output.is_dir():
        raise InvalidOption(f"-o {output} is a folder; give a file name like {output / 'image.png'}.")
    if output.suffix.lower() != ".png":
        raise InvalidOption(f"-o {output}: Stepgrid writes PNG files; give a name ending in .png.")
    model = Path(args.model).expanduser()
    looks_like_path = (args.model.startswith((".", "/", "~")) or model.exists()) and model.suffix != ".toml"
    if looks_like_path and not (model / "model_index.json").is_file():
        what = "is not a diffusers model folder (no model_index.json)" if model.is_dir() else "does not exist"
        raise InvalidOption(f"--model {args.model} {what}.")


def write_outputs(request: Request, result: JobResult, output: Path) -> list[Path]:
    """Write the image (or numbered images, or the labelled grid) and return the paths."""
    from bot.render import grid_png

    output.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(request, CompareStepsRequest):
        footer = f"{request.prompt} · {result.model} · {request.scheduler} · seed {request.seed}"
        if result.is_test_model:
            footer += f" · {TEST_MODEL_NOTE}"
        output.write_bytes(grid_png(result.images, footer=footer))
        return [output]
    if len(result.images) == 1:
        output.write_bytes(result.images[0].png)
        return [output]
    paths = []
    for number, image in enumerate(result.images, start=1):
        path = output.with_name(f"{output.stem}-{number}{output.suffix or '.png'}")
        path.write_bytes(image.png)
        paths.append(path)
    return paths


def _generate_command(args: argparse.Namespace, settings: Settings) -> int:
    try:
        request = request_from_args(args)
        check_output_and_model(args)
    except InvalidOption as error:
        print(f"stepgrid: {error}", file=sys.stderr)
        return 2
    try:
        models_from_setting(args.model)
    except RegistryError as error:
        print(f"stepgrid: {error}", file=sys.stderr)
        return 2
    settings = settings.model_copy(update={"model": args.model, "device": args.device, "dtype": args.dtype})
    if not args.verbose:
        # Read by the spawned worker; every failure still reaches the user as one line from here.
        os.environ.setdefault("STEPGRID_LOG_LEVEL", "CRITICAL")
    started = time.perf_counter()
    try:
        unset = {name for name in MODEL_DEFAULTS if getattr(args, name) is None}
        request, result = asyncio.run(generate(request, settings, unset=unset))
    except InvalidRequest as error:  # e.g. a scheduler or size this model can't do
        print(f"stepgrid: {error}", file=sys.stderr)
        return 2
    except (GenerationFailed, WorkerUnavailable) as error:
        print(f"stepgrid: {error}", file=sys.stderr)
        return 1
    paths = write_outputs(request, result, args.output)
    steps = ",".join(str(steps) for steps in sorted({image.steps for image in result.images}))
    seeds = ",".join(str(seed) for seed in dict.fromkeys(image.seed for image in result.images))
    note = f" ({TEST_MODEL_NOTE})" if result.is_test_model else ""
    truncated = " The prompt was cut to the model's 77-token limit." if result.prompt_truncated else ""
    print(
        f"wrote {', '.join(map(str, paths))}: {request.scheduler}, steps {steps}, seed {seeds}, "
        f"{time.perf_counter() - started:.1f}s in all{note}.{truncated}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point."""
    try:
        settings = Settings()
    except ValidationError as error:
        problem = error.errors()[0]
        name = "STEPGRID_" + "_".join(str(part) for part in problem["loc"]).upper()
        print(f"stepgrid: the setting {name} is invalid: {problem['msg']}.", file=sys.stderr)
        return 2
    args = build_parser(settings).parse_args(argv)
    if args.command in ("worker", "workers"):
        from bot.fleet import worker_command, workers_command

        return worker_command(args, settings) if args.command == "worker" else workers_command(args)
    if args.command == "run":
        from bot.client import run
        from bot.fleet import check_bot_redis

        if (unreachable := check_bot_redis(settings)) is not None:
            print(f"stepgrid: {unreachable}", file=sys.stderr)
            return 2

        return run(settings)
    if args.command == "db":
        from bot.db_migrations import DatabaseTooNew, upgrade_database

        try:
            upgrade_database(settings.database_path)
        except DatabaseTooNew as error:
            print(f"stepgrid: {error}", file=sys.stderr)
            return 2
        print(f"database {settings.database_path} is at the latest schema")
        return 0
    if args.command == "usage":
        from bot.usage_report import export_csv

        try:
            export_csv(settings.database_path, sys.stdout)
        except FileNotFoundError as error:
            print(f"stepgrid: {error}", file=sys.stderr)
            return 1
        return 0
    return _generate_command(args, settings)


if __name__ == "__main__":
    raise SystemExit(main())

"""The `stepgrid` command: run the bot, or generate images offline through the same worker."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import difflib
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn, TextIO

from pydantic import ValidationError

from bot.config import Settings, checked_device, checked_dtype
from bot.errors import InvalidOption, echo
from bot.job_requests import RequestDefaults, RequestOptions, build_request, checked
from bot.limits.server import EffectiveLimits
from inference.logs import report_fatal
from inference.parameters import grid_infotext
from inference.protocol import (
    DEFAULT_GRID_SCHEDULERS,
    GUIDANCE_IGNORED,
    GUIDANCE_INPUT,
    MAX_PIXELS,
    MAX_SIZE,
    MIN_SIZE,
    SCHEDULER_NAMES,
    SIZE_MULTIPLE,
    CompareSchedulersRequest,
    CompareStepsRequest,
    InvalidRequest,
    JobFailed,
    JobProgress,
    JobQueued,
    JobResult,
    ModelInfo,
    Request,
    WorkerReady,
)
from inference.queues.base import ModelsUnavailable, WorkerUnavailable
from inference.queues.local import LocalJobQueue
from inference.registry import TEST_MODEL_NAMES, ModelSpec, RegistryError, models_from_setting

TEST_MODEL_NOTE = "random-weight test model: its images are noise, not art"
TINY_MODELS = TEST_MODEL_NAMES[:5]  # one per family; the rest are full-size random weights, for benchmarks


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line and exits 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{echo(text)} is not a whole number") from None


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{echo(text)} is not a number") from None


def _add_generation_options(parser: argparse.ArgumentParser, settings: Settings, *, scheduler: bool = True) -> None:
    parser.add_argument("prompt", help="what to draw")
    if scheduler:
        parser.add_argument(
            "--scheduler",
            default=None,
            help=f"one of {', '.join(SCHEDULER_NAMES)} that the model can run (default: the model's own)",
        )
    parser.add_argument("--seed", type=_whole_number, default=-1, help="0 to 4294967295; -1 or left out: random")
    parser.add_argument("--negative", default="", help="negative prompt: what to keep out of the image")
    parser.add_argument(
        "--guidance",
        type=_number,
        default=None,
        help="classifier-free guidance, 0-30 (default: the model's own)",
    )
    parser.add_argument(
        "--size",
        default=None,
        help=f"512 or WIDTHxHEIGHT, multiples of {SIZE_MULTIPLE} from {MIN_SIZE} to {MAX_SIZE}, at most "
        f"{MAX_PIXELS:,} pixels (default: the model's native size)",
    )
    names = ", ".join(spec.name for spec in settings.model_specs())
    parser.add_argument(
        "--model",
        default=None,
        help=f"a configured model ({names}), a hub id, local diffusers folder, registry file (.toml), or a "
        f"random-weight test model: {', '.join(TINY_MODELS)} (default: the first configured model)",
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
    imagine.add_argument("--steps", type=_whole_number, default=None, help="1-150 (default: the model's own)")
    imagine.add_argument(
        "--count", type=_whole_number, default=1, help="1-4 images, seeded seed, seed+1, ... (default: 1)"
    )
    imagine.add_argument(
        "-o", "--output", type=Path, required=True, help="PNG file to write; with --count N: NAME-1.png ... NAME-N.png"
    )
    imagine.add_argument(
        "--film",
        type=Path,
        default=None,
        metavar="PATH",
        help="also write the Steps film, the predicted finished image at every step, to PATH: an animated WebP "
        "or GIF, as its name ends (.webp or .gif); one image only",
    )

    about = "One labelled grid of the same prompt and seed at several step counts."
    compare = commands.add_parser("compare-steps", help=about, description=about)
    _add_generation_options(compare, settings)
    compare.add_argument(
        "--steps",
        default=None,
        help="2 to 12 step counts, comma-separated, any order (default: the model's own ladder, e.g. 1,2,3,4,6,8 for a "
        "few-step model, 5,10,20,30,40,50 for SD 1.5)",
    )
    compare.add_argument("-o", "--output", type=Path, required=True, help="PNG file to write the grid to")

    about = "One labelled grid of the same prompt and seed: rows = schedulers, columns = step counts."
    schedulers = commands.add_parser("compare-schedulers", help=about, description=about)
    _add_generation_options(schedulers, settings, scheduler=False)
    schedulers.add_argument(
        "--schedulers",
        default=None,
        help="2 to 6 schedulers, comma-separated (default: a varied set the model can run, e.g. "
        f"{', '.join(DEFAULT_GRID_SCHEDULERS)})",
    )
    schedulers.add_argument(
        "--steps",
        default=None,
        help="step counts, comma-separated; at most 12 cells in all (default: the model's ladder, spread to fit)",
    )
    schedulers.add_argument("-o", "--output", type=Path, required=True, help="PNG file to write the grid to")

    db = commands.add_parser("db", help="database maintenance")
    db_commands = db.add_subparsers(dest="db_command", metavar="upgrade|backup", required=True, parser_class=_Parser)
    db_commands.add_parser("upgrade", help="apply migrations to the configured database")
    about = "Copy the database to PATH, consistent even while the bot runs (SQLite's online backup)."
    backup = db_commands.add_parser("backup", help="copy the database safely while the bot runs", description=about)
    backup.add_argument("path", type=Path, help="the file to write the copy to")
    backup.add_argument("--force", action="store_true", help="replace PATH if it exists")

    about = "Sync the slash commands to Discord now; the bot syncs at start only when they changed."
    commands.add_parser("sync", help="sync the slash commands now (needs the token)", description=about)

    about = (
        "List the configured models (and the built-in tiny ones to try offline); then load the configured ones in a "
        "worker and show their defaults, or why one failed."
    )
    models = commands.add_parser("models", help="list the configured models and what loaded", description=about)
    models.add_argument("--no-load", action="store_true", help="only list the configuration; load nothing")
    models.add_argument("--device", default=settings.device, help="auto, cpu, cuda, ... (default: %(default)s)")
    models.add_argument("--dtype", default=settings.dtype, help="auto, float32, float16, bfloat16")
    models.add_argument("-v", "--verbose", action="store_true", help="show the worker's log")

    from bot.cli.fleet import add_fleet_commands

    add_fleet_commands(commands, settings)

    usage = commands.add_parser("usage", help="export the usage ledger or the limits history as CSV")
    export = usage.add_mutually_exclusive_group(required=True)
    export.add_argument("--csv", action="store_true", help="the ledger: one CSV row per job on stdout")
    export.add_argument(
        "--limits-csv", action="store_true", help="the limits history: one CSV row per changed server limit on stdout"
    )
    return parser


def options_from_args(args: argparse.Namespace) -> RequestOptions:
    """What the arguments ask for, options left out as None (the model's defaults fill them in)."""
    grid = args.command == "compare-steps"
    scheduler_grid = args.command == "compare-schedulers"
    return RequestOptions(
        prompt=args.prompt,
        negative_prompt=args.negative,
        scheduler=None if scheduler_grid else args.scheduler,
        seed=None if args.seed == -1 else args.seed,
        guidance=args.guidance,
        size=args.size,
        steps=None if grid or scheduler_grid else args.steps,
        count=None if grid or scheduler_grid else args.count,
        compare_steps=args.steps if grid or scheduler_grid else None,
        grid=grid,
        film=getattr(args, "film", None) is not None,
        schedulers=args.schedulers if scheduler_grid else None,
        scheduler_grid=scheduler_grid,
    )


def request_from_args(args: argparse.Namespace, defaults: RequestDefaults | None = None) -> Request:
    """Build and check the request with the commands' builder; raises InvalidOption with a one-line reason.

    Before the model is loaded (`defaults` None) this checks what can be checked without it.
    """
    return checked(build_request(options_from_args(args), defaults or RequestDefaults()))


def cli_defaults(settings: Settings, specs: Sequence[ModelSpec], model: ModelInfo) -> RequestDefaults:
    """The defaults the bot would use for `model`, from the same place (the operator's limits, no server)."""
    return EffectiveLimits.combine(None, settings, models=specs).request_defaults(model)


def select_models(choice: str | None, settings: Settings) -> tuple[ModelSpec, ...]:
    """The model `--model` names: a name in the configured registry (STEPGRID_MODEL), else a hub id,
    local folder, registry file or test model. Left out: the configured default. Raises
    InvalidOption for a bare name that is none of these (a typo in a registry name)."""
    configured = settings.model_specs()
    if choice is None:
        return configured[:1]
    by_name = {spec.name: spec for spec in configured}
    if choice in by_name:
        return (by_name[choice],)
    path = Path(choice).expanduser()
    bare_name = not any(mark in choice for mark in ("/", "\\", "[", "=")) and not choice.startswith((".", "~"))
    if bare_name and choice not in TEST_MODEL_NAMES and not path.exists() and not choice.endswith(".toml"):
        close = difflib.get_close_matches(choice, [*by_name, *TEST_MODEL_NAMES], n=1, cutoff=0.75)
        suggestion = f" (did you mean {close[0]!r}?)" if close else ""
        raise InvalidOption(
            f"--model {choice}: no such model{suggestion}; choose one of the configured models ({', '.join(by_name)}), "
            f"a hub id like owner/name, a local folder, or a test model ({', '.join(TINY_MODELS)})."
        )
    return models_from_setting(choice)[:1]


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
    options: RequestOptions, settings: Settings, specs: Sequence[ModelSpec], *, out: TextIO = sys.stderr
) -> tuple[Request, JobResult]:
    """Run what `options` ask through a LocalJobQueue and its spawned worker loading `specs`,
    drawing a progress bar. Options left out take the loaded model's defaults, decided where the
    bot decides them. Returns the request as run and its result."""
    config = dataclasses.replace(settings.worker_config(), model="", models=tuple(specs))
    queue = LocalJobQueue(config, hang_seconds=settings.worker_hang_seconds)
    await queue.start()
    try:
        out.write(f"loading {', '.join(spec.name for spec in specs)} ...\n")
        await queue.wait_ready()
        info = queue.worker_info
        if info is not None:
            note = f" — {TEST_MODEL_NOTE}" if info.is_test_model else ""
            out.write(f"model {info.model} on {info.device} ({info.dtype}){note}\n")
        for missing in info.unavailable if info else ():
            out.write(f"model {missing.name} is unavailable: {missing.message}\n")
        model = queue.model_info("")
        request = checked(build_request(options, cli_defaults(settings, specs, model)))
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
    check_writable(output)
    film: Path | None = getattr(args, "film", None)
    if film is not None:
        if film.suffix.lower() not in (".webp", ".gif"):
            raise InvalidOption(f"--film {film}: the film is an animation; give a name ending in .webp or .gif.")
        check_writable(film, "--film")
    if args.model is None:
        return
    model = Path(args.model).expanduser()
    looks_like_path = (args.model.startswith((".", "/", "~")) or model.exists()) and model.suffix != ".toml"
    if looks_like_path and not (model / "model_index.json").is_file():
        what = "is not a diffusers model folder (no model_index.json)" if model.is_dir() else "does not exist"
        raise InvalidOption(f"--model {args.model} {what}.")


def _checked_hardware(args: argparse.Namespace) -> tuple[str, str]:
    """--device and --dtype as the worker needs them, checked before any model loads."""
    try:
        device = checked_device(args.device)
    except ValueError as error:
        raise InvalidOption(f"--device {error}.") from None
    try:
        dtype = checked_dtype(args.dtype)
    except ValueError as error:
        raise InvalidOption(f"--dtype {error}.") from None
    return device, dtype


def check_writable(output: Path, option: str = "-o") -> None:
    """Refuse (before a render that may take minutes) an output whose folder can't take a new file;
    the message names the `option` that gave it. Folders still to be made are made only when writing,
    so a request refused later leaves none behind."""
    folder = output.parent
    existing = next(parent for parent in (folder, *folder.parents) if os.path.exists(parent))
    if not existing.is_dir():
        raise InvalidOption(f"{option} {output}: {existing} is a file, not a folder.")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".stepgrid-probe-"):
            pass
    except OSError as error:
        where = f"can't write in {folder}" if existing == folder else f"the folder {folder} can't be created"
        raise InvalidOption(f"{option} {output}: {where} ({_reason(error)}).") from None
    if output.exists() and not os.access(output, os.W_OK):
        raise InvalidOption(f"{option} {output}: the file exists and can't be overwritten.")


def _reason(error: OSError) -> str:
    return error.strerror or type(error).__name__


class OutputLost(RuntimeError):
    """The image(s) could be written neither where asked nor anywhere else; the message says why."""


def save_outputs(
    request: Request, result: JobResult, output: Path, film: Path | None = None
) -> tuple[list[Path], str | None]:
    """Write the outputs where asked; if that fails after the render, write them to a new folder in the
    temporary directory instead, so that a finished image is never lost. Returns the paths written and,
    when they were rescued, why the asked-for place failed."""
    try:
        return write_outputs(request, result, output, film), None
    except OSError as error:
        problem = f"could not write {output} ({_reason(error)})"
    try:
        rescue = Path(tempfile.mkdtemp(prefix="stepgrid-rescued-")) / output.name
        return write_outputs(request, result, rescue, film and rescue.with_name(film.name)), problem
    except OSError as error:
        raise OutputLost(f"{problem}, nor a copy in the temporary folder ({_reason(error)}).") from None


def write_outputs(request: Request, result: JobResult, output: Path, film: Path | None = None) -> list[Path]:
    """Write the image (or numbered images, or the labelled grid, and the film) and return the paths."""
    from bot.pictures.film import film_file
    from bot.pictures.grids import render_grid

    output.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(request, CompareStepsRequest | CompareSchedulersRequest):
        header = f"{request.prompt} · {result.model} · {request.scheduler} · seed {request.seed}"
        if result.is_test_model:
            header += f" · {TEST_MODEL_NOTE}"
        parameters = grid_infotext(request, model=result.model)
        output.write_bytes(render_grid(request, result.images, header=header, parameters=parameters).png)
        return [output]
    if len(result.images) == 1:
        image = result.images[0]
        output.write_bytes(image.png)
        if film is None or not image.frames:
            return [output]
        # The name says the format; no upload limit here, so the frames keep their size.
        film.parent.mkdir(parents=True, exist_ok=True)
        film.write_bytes(film_file(image.frames, request.prompt, film.suffix.lower().lstrip(".")))
        return [output, film]
    paths = []
    for number, image in enumerate(result.images, start=1):
        path = output.with_name(f"{output.stem}-{number}{output.suffix or '.png'}")
        path.write_bytes(image.png)
        paths.append(path)
    return paths


def _generate_command(args: argparse.Namespace, settings: Settings) -> int:
    try:
        request_from_args(args)  # what can be refused before loading anything
        args.device, args.dtype = _checked_hardware(args)
        check_output_and_model(args)
        specs = select_models(args.model, settings)
    except (InvalidOption, RegistryError) as error:
        print(f"stepgrid: {error}", file=sys.stderr)
        return 2
    settings = settings.model_copy(update={"device": args.device, "dtype": args.dtype})
    _quiet_worker(args)
    started = time.perf_counter()
    try:
        request, result = asyncio.run(generate(options_from_args(args), settings, specs))
    except (InvalidRequest, InvalidOption, ModelsUnavailable) as error:  # e.g. a scheduler or size this
        print(f"stepgrid: {error}", file=sys.stderr)  # model can't do, or a --model that doesn't load
        return 2
    except (GenerationFailed, WorkerUnavailable) as error:
        print(f"stepgrid: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stepgrid: interrupted; nothing was written.", file=sys.stderr)
        return 130
    try:
        paths, problem = save_outputs(request, result, args.output, getattr(args, "film", None))
    except OutputLost as error:
        print(f"stepgrid: {error}", file=sys.stderr)
        return 1
    if problem is not None:
        print(f"stepgrid: {problem}; saved to {', '.join(map(str, paths))} instead.", file=sys.stderr)
        return 1
    steps = ",".join(str(steps) for steps in sorted({image.steps for image in result.images}))
    seeds = ",".join(str(seed) for seed in dict.fromkeys(image.seed for image in result.images))
    note = f" ({TEST_MODEL_NOTE})" if result.is_test_model else ""
    truncated = " The prompt was cut to the model's token limit." if result.prompt_truncated else ""
    print(
        f"wrote {', '.join(map(str, paths))}: {request.scheduler}, steps {steps}, seed {seeds}, "
        f"{time.perf_counter() - started:.1f}s in all{note}.{truncated}{_film_note(request, result)}"
    )
    if isinstance(request, CompareStepsRequest | CompareSchedulersRequest):
        from bot.pictures.grids import grid_rows
        from bot.pictures.sweet_spot import summary

        print(summary([row for _, row in grid_rows(request, result.images)]))
    return 0


def _film_note(request: Request, result: JobResult) -> str:
    """A sentence saying the film's frames are smaller than the image (the worker caps them), or ""."""
    from bot.pictures.film import downscale_note, frame_size

    frames = result.images[0].frames if len(result.images) == 1 else ()
    note = downscale_note(frame_size(frames), (request.width, request.height)) if frames else None
    return f" The film's frames are {note}." if note else ""


def _quiet_worker(args: argparse.Namespace) -> None:
    if not args.verbose:
        # Read by the spawned worker; every failure still reaches the user as one line from here.
        os.environ.setdefault("STEPGRID_LOG_LEVEL", "CRITICAL")


def configured_lines(specs: Sequence[ModelSpec]) -> list[str]:
    """The registry as `stepgrid models` lists it: name, source and the operator's overrides."""
    lines = []
    for number, spec in enumerate(specs):
        extras = [
            f"{key} {value if not isinstance(value, tuple) else ','.join(map(str, value))}"
            for key, value in (
                ("variant", spec.variant),
                ("revision", spec.revision),
                ("steps", spec.steps),
                ("scheduler", spec.scheduler),
                ("guidance", spec.guidance),
                ("ladder", spec.compare_steps),
                ("max steps", spec.max_steps),
            )
            if value is not None
        ]
        default = " (default)" if number == 0 else ""
        lines.append(f"  {spec.name}{default}: {spec.source}" + (f" · {', '.join(extras)}" if extras else ""))
    return lines


def loaded_lines(model: ModelInfo, limits: EffectiveLimits) -> list[str]:
    """One loaded model as `stepgrid models` shows it: family, defaults, ladder, sizes, ceilings."""
    defaults = limits.request_defaults(model)
    guidance = guidance_text(model)
    ceiling = limits.max_steps_for(model.name)
    note = f" — {TEST_MODEL_NOTE}" if model.is_test_model else ""
    return [
        f"  {model.name}: {model.family}{note}",
        f"    defaults: {defaults.steps} steps, {defaults.scheduler}, {guidance}, "
        f"{defaults.width}x{defaults.height} (native {model.native_size}, multiples of {model.size_multiple})",
        f"    compare-steps ladder: {','.join(map(str, defaults.compare_steps))}; max steps {ceiling}",
        f"    schedulers: {', '.join(model.schedulers)}",
    ]


def guidance_text(model: ModelInfo) -> str:
    """How a model takes guidance, for `stepgrid models`: what a member can change and what not."""
    if model.guidance_mode == GUIDANCE_IGNORED:
        return "no guidance (ignored), no negative prompt"
    if model.guidance_mode == GUIDANCE_INPUT:
        return f"guidance {model.default_guidance:g} (a model input), no negative prompt"
    if model.default_guidance <= 1:
        return f"guidance {model.default_guidance:g} (no CFG; a negative prompt needs guidance above 1)"
    return f"guidance {model.default_guidance:g}"


async def load_models(settings: Settings, specs: Sequence[ModelSpec]) -> WorkerReady:
    """Start a worker with `specs`, wait until it reports what loaded, and stop it."""
    config = dataclasses.replace(settings.worker_config(), model="", models=tuple(specs))
    queue = LocalJobQueue(config, hang_seconds=settings.worker_hang_seconds)
    await queue.start()
    try:
        await queue.wait_ready()
        assert queue.worker_info is not None
        return queue.worker_info
    finally:
        await queue.close()


def _models_command(args: argparse.Namespace, settings: Settings) -> int:
    specs = settings.model_specs()
    print("configured (STEPGRID_MODEL):")
    print("\n".join(configured_lines(specs)))
    print(f"built in, to try offline (random weights, --model NAME): {', '.join(TINY_MODELS)}")
    if args.no_load:
        return 0
    try:
        device, dtype = _checked_hardware(args)
    except InvalidOption as error:  # or the worker would crash three times over it, with tracebacks
        print(f"stepgrid: {error}", file=sys.stderr)
        return 2
    settings = settings.model_copy(update={"device": device, "dtype": dtype})
    _quiet_worker(args)
    try:
        ready = asyncio.run(load_models(settings, specs))
    except WorkerUnavailable as error:
        print(f"stepgrid: no model loaded: {error}", file=sys.stderr)
        return 2 if isinstance(error, ModelsUnavailable) else 1  # 2: the configured models are the problem
    limits = EffectiveLimits.combine(None, settings, models=specs)
    print(f"loaded on {ready.device} ({ready.dtype}) in {ready.load_seconds:.1f}s:")
    for model in ready.models:
        print("\n".join(loaded_lines(model, limits)))
    if ready.unavailable:
        print("unavailable:")
        for missing in ready.unavailable:
            print(f"  {missing.name}: {missing.message}")
    return 0


def _backup_command(args: argparse.Namespace, settings: Settings) -> int:
    from bot.storage.backup import BackupRefused, backup_database
    from bot.storage.migrate import DatabaseUnusable

    try:
        backup = backup_database(settings.database_path, args.path, force=args.force)
    except FileNotFoundError as error:
        print(f"stepgrid: {error}", file=sys.stderr)
        return 1
    except (BackupRefused, DatabaseUnusable) as error:
        print(f"stepgrid: {error}", file=sys.stderr)
        return 2
    print(f"backed up {settings.database_path} to {backup.path}: {backup.jobs} jobs, {backup.size / 1e6:.1f} MB")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point."""
    try:
        settings = Settings()
    except ValidationError as error:
        problem = error.errors()[0]
        name = "STEPGRID_" + "_".join(str(part) for part in problem["loc"]).upper()
        message = str(problem["msg"]).removeprefix("Value error, ")
        if problem["type"] != "value_error":  # pydantic's own checks don't name the value; ours do
            message += f"; got {problem['input']!r}"
        print(f"stepgrid: the setting {name} is invalid: {message}.", file=sys.stderr)
        return 2
    args = build_parser(settings).parse_args(argv)
    if args.command in ("worker", "workers"):
        from bot.cli.fleet import worker_command, workers_command

        return worker_command(args, settings) if args.command == "worker" else workers_command(args)
    if args.command == "run":
        from bot.chat.client import run
        from bot.cli.fleet import check_bot_redis

        if (unreachable := check_bot_redis(settings)) is not None:
            report_fatal("bot", "stepgrid", unreachable, log_format=settings.log_format)
            return 2

        return run(settings)
    if args.command == "sync":
        from bot.chat.client import STARTUP_ERRORS, sync_now

        try:
            asyncio.run(sync_now(settings))
        except STARTUP_ERRORS as error:
            print(f"stepgrid: {error}", file=sys.stderr)
            return 2
        return 0
    if args.command == "db" and args.db_command == "backup":
        return _backup_command(args, settings)
    if args.command == "db":
        from bot.storage.lock import DatabaseInUse, database_lock
        from bot.storage.migrate import DatabaseTooNew, DatabaseUnusable, upgrade_database

        try:
            with database_lock(settings.database_path):  # not under a running bot, which expects its own schema
                upgrade_database(settings.database_path)
        except (DatabaseTooNew, DatabaseUnusable, DatabaseInUse) as error:
            print(f"stepgrid: {error}", file=sys.stderr)
            return 2
        print(f"database {settings.database_path} is at the latest schema")
        return 0
    if args.command == "models":
        return _models_command(args, settings)
    if args.command == "usage":
        from bot.ops.usage_report import export_csv, export_limits_csv
        from bot.storage.migrate import DatabaseUnusable

        try:
            (export_limits_csv if args.limits_csv else export_csv)(settings.database_path, sys.stdout)
        except FileNotFoundError as error:
            print(f"stepgrid: {error}", file=sys.stderr)
            return 1
        except DatabaseUnusable as error:
            print(f"stepgrid: {error}", file=sys.stderr)
            return 2
        return 0
    return _generate_command(args, settings)


if __name__ == "__main__":
    raise SystemExit(main())

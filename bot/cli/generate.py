"""`stepgrid imagine`, `upscale` and the `compare-*` grids offline: requests from arguments, the same
queue and worker the bot uses, a progress bar, and outputs written where asked (or rescued)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import difflib
import io
import os
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Collection, Sequence
from functools import partial
from pathlib import Path
from typing import TextIO

from PIL import Image

from bot.cli.safety import ALL_WITHHELD_EXIT, cli_checker, screen
from bot.config import Settings, checked_device, checked_dtype
from bot.errors import InvalidOption
from bot.job_requests import AUTO, RequestDefaults, RequestOptions, build_request, checked, requested_loras
from bot.limits.server import EffectiveLimits
from bot.pictures.input_image import prepare_input_image
from inference.models.files import info_before_loading, local_source_problem
from inference.parameters import PNG_KEY, grid_infotext, strength_grid_infotext
from inference.protocol import (
    SIZE_MULTIPLE,
    CompareGuidanceRequest,
    CompareSchedulersRequest,
    CompareStepsRequest,
    CompareStrengthRequest,
    GenerateRequest,
    InvalidRequest,
    JobFailed,
    JobProgress,
    JobQueued,
    JobResult,
    ModelInfo,
    Request,
)
from inference.queues.base import ModelsUnavailable, WorkerUnavailable
from inference.queues.local import LocalJobQueue
from inference.registry import TEST_MODEL_NAMES, ModelSpec, RegistryError, models_from_setting
from inference.validation import validate_for_model

TEST_MODEL_NOTE = "random-weight test model: its images are noise, not art"


TINY_MODELS = TEST_MODEL_NAMES[:5]  # one per family; the rest are full-size random weights, for benchmarks


def read_input_image(args: argparse.Namespace) -> bytes | None:
    """The bytes of `--image` (or upscale's image); InvalidOption when it can't be read."""
    path: Path | None = getattr(args, "image", None)
    if path is None:
        return None
    try:
        return path.expanduser().read_bytes()
    except OSError as error:
        raise InvalidOption(f"{path}: {_reason(error)}") from None


def prompt_of(image: bytes) -> str:
    """The prompt in an image's A1111 `parameters` (Stepgrid's and A1111's own images carry one), or ""."""
    try:
        with Image.open(io.BytesIO(image)) as opened:
            text = opened.info.get(PNG_KEY, "")
    except Exception:
        return ""
    return text.split("\n", 1)[0].strip() if isinstance(text, str) else ""


def options_from_args(args: argparse.Namespace, multiple: int = SIZE_MULTIPLE) -> RequestOptions:
    """What the arguments ask for, options left out as None (the model's defaults fill them in). An
    input image is checked and normalised for a model whose sizes are multiples of `multiple`."""
    grid = args.command == "compare-steps"
    scheduler_grid = args.command == "compare-schedulers"
    guidance_grid = args.command == "compare-guidance"
    upscale = args.command == "upscale"
    strength_grid = args.command == "compare-strength"
    steps_grid = grid or scheduler_grid or strength_grid or guidance_grid  # --steps is a list of step counts
    data = read_input_image(args)
    image, size, prompt = None, getattr(args, "size", None), args.prompt
    if data is not None:
        prepared = prepare_input_image(data, multiple=multiple)
        image, size = prepared.png, size or f"{prepared.width}x{prepared.height}"
        if prompt is None:
            prompt = prompt_of(data)
            if not prompt:
                raise InvalidOption(f"{args.image} carries no prompt in its parameters: give one with --prompt.")
    return RequestOptions(
        prompt=prompt,
        negative_prompt=args.negative,
        scheduler=None if scheduler_grid else args.scheduler,
        seed=None if args.seed == -1 else args.seed,
        guidance=None if guidance_grid else args.guidance,
        size=size,
        steps=None if steps_grid or args.steps == AUTO else args.steps,
        count=None if steps_grid or upscale else args.count,
        compare_steps=args.steps if steps_grid else None,
        grid=grid,
        film=getattr(args, "film", None) is not None,
        schedulers=args.schedulers if scheduler_grid else None,
        scheduler_grid=scheduler_grid,
        guidances=args.guidance if guidance_grid else None,
        guidance_grid=guidance_grid,
        stop_early=getattr(args, "stop_early", False) is True,
        image=image,
        strength=getattr(args, "strength", None),
        upscale=upscale,
        strengths=getattr(args, "strengths", None),
        strength_grid=strength_grid,
        lora=getattr(args, "lora", None),
        lora_weight=getattr(args, "lora_weight", None),
        lora_compare=getattr(args, "lora_compare", False),
        auto_steps=not steps_grid and args.steps == AUTO,
        seeds=getattr(args, "seeds", None),
    )


def request_from_args(args: argparse.Namespace, defaults: RequestDefaults | None = None) -> Request:
    """Build and check the request with the commands' builder; raises InvalidOption with a one-line reason.

    Before the model is loaded (`defaults` None) this checks what can be checked without it.
    """
    return checked(build_request(options_from_args(args), defaults or RequestDefaults()))


def cli_defaults(
    settings: Settings, specs: Sequence[ModelSpec], model: ModelInfo, loras: Sequence[str] = ()
) -> RequestDefaults:
    """The defaults the bot would use for `model` (and the prompt's `<lora:…>` LoRAs), from the same place
    (the operator's limits, no server)."""
    return EffectiveLimits.combine(None, settings, models=specs).request_defaults(model, loras)


def check_before_loading(args: argparse.Namespace, settings: Settings, specs: Sequence[ModelSpec]) -> None:
    """Refuse what the model can't do where its folder's configs tell that without loading a weight (minutes for
    a real model): the request built with the model's own defaults and checked as the worker will check it.
    Options naming LoRAs wait for the load (what a LoRA allows is known once it is loaded)."""
    model = info_before_loading(specs[0], settings.model_cache_dir) if specs else None
    if model is None:
        return
    options = options_from_args(args, model.size_multiple)
    if requested_loras(options)[1]:
        return
    request = checked(build_request(options, cli_defaults(settings, specs, model)))
    try:
        validate_for_model(request, model)
    except InvalidRequest as error:
        raise InvalidOption(str(error)) from None


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
    if not looks_like_path:
        return
    if not model.exists():
        raise InvalidOption(f"--model {args.model} does not exist.")
    if (problem := local_source_problem(model, repr(args.model))) is not None:  # as the worker would say it
        raise InvalidOption(problem)


def checked_hardware(args: argparse.Namespace) -> tuple[str, str]:
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
    request: Request,
    result: JobResult,
    output: Path,
    film: Path | None = None,
    *,
    device: str | None = None,
    withheld: Collection[int] = (),
) -> tuple[list[Path], str | None]:
    """Write the image (or numbered images, or the labelled grid, and the film) where asked, but not the
    images at the indexes `withheld` (nor their films); each file appears whole or not at all (see
    `write_file`). If that fails after the render, write them to a new folder in the temporary directory
    instead, so that a finished image is never lost. Returns the paths written and, when they were rescued,
    why the asked-for place failed."""
    from bot.pictures.film import film_file
    from bot.pictures.render import png_parameters

    def write(output: Path, film: Path | None) -> list[Path]:
        if isinstance(request, GenerateRequest) and set(withheld) >= set(range(len(result.images))):
            return []  # every image withheld: no file, and no folder made for one
        output.parent.mkdir(parents=True, exist_ok=True)
        if not isinstance(request, GenerateRequest):
            write_file(output, _grid_png(request, result, device))
            return [output]
        if len(result.images) == 1:
            image = result.images[0]
            write_file(output, image.png)
            if film is None or not image.frames:
                return [output]
            # The name says the format; no upload limit here, so the frames keep their size.
            film.parent.mkdir(parents=True, exist_ok=True)
            extension = film.suffix.lower().lstrip(".")
            frames = film_file(image.frames, request.prompt, extension, png_parameters(image.png), image.frame_sigmas)
            write_file(film, frames)
            return [output, film]
        paths = []
        for number, image in enumerate(result.images, start=1):
            if number - 1 in withheld:
                continue
            path = output.with_name(f"{output.stem}-{number}{output.suffix or '.png'}")
            write_file(path, image.png)
            paths.append(path)
        return paths

    try:
        return write(output, film), None
    except OSError as error:
        problem = f"could not write {output} ({_reason(error)})"
    try:
        rescue = Path(tempfile.mkdtemp(prefix="stepgrid-rescued-")) / output.name
        return write(rescue, film and rescue.with_name(film.name)), problem
    except OSError as error:
        raise OutputLost(f"{problem}, nor a copy in the temporary folder ({_reason(error)}).") from None


def output_paths(request: Request, output: Path, film: Path | None = None) -> list[Path]:
    """Where `save_outputs` writes: the image or grid, numbered images for --count, and the film."""
    if not isinstance(request, GenerateRequest):
        return [output]
    if request.count > 1:
        return [output.with_name(f"{output.stem}-{number}{output.suffix}") for number in range(1, request.count + 1)]
    return [output] if film is None or not request.film else [output, film]


def _grid_png(
    request: CompareStepsRequest | CompareSchedulersRequest | CompareStrengthRequest | CompareGuidanceRequest,
    result: JobResult,
    device: str | None,
) -> bytes:
    """A grid request's labelled PNG, titled with the prompt and the facts every cell shares."""
    from bot.pictures.grids import cell_lora_hashes, render_grid, render_strength_grid
    from bot.pictures.guidance_grid import render_guidance_result
    from bot.pictures.stop_early import render_stop_early_grid

    rows_named = isinstance(request, CompareSchedulersRequest) or (
        isinstance(request, CompareStepsRequest) and request.without_loras is not None
    )
    scheduler = "" if rows_named else f" · {request.scheduler}"  # rows name their schedulers
    seeds = request.seeds if isinstance(request, CompareStepsRequest) else 1  # several: the rows name them
    facts = f"{result.model}{scheduler} · " + (f"{seeds} seeds" if seeds > 1 else f"seed {request.seed}")
    if result.is_test_model:
        facts += f" · {TEST_MODEL_NOTE}"
    if isinstance(request, CompareStrengthRequest):
        parameters = strength_grid_infotext(request, model=result.model)
        return render_strength_grid(request, result.images, facts=facts, device=device, parameters=parameters).png
    if isinstance(request, CompareGuidanceRequest):
        return render_guidance_result(request, result.images, model=result.model, facts=facts, device=device).png
    if isinstance(request, CompareStepsRequest) and request.stop_early:
        return render_stop_early_grid(request, result.images, model=result.model, facts=facts, device=device).png
    parameters = grid_infotext(request, model=result.model, lora_hashes=cell_lora_hashes(result.images))
    return render_grid(request, result.images, facts=facts, device=device, parameters=parameters).png


def write_file(path: Path, data: bytes) -> None:
    """Write `data` to `path` whole or not at all: into a temporary file beside it, then renamed over it (a
    full disk leaves the old file, or none, never a cut-off one). A symlink is written through, to the file
    it names; a target that is not a regular file (a device such as /dev/full) is written directly."""
    target = Path(os.path.realpath(path))
    if target.exists() and not target.is_file():
        target.write_bytes(data)
        return
    descriptor, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, _mode_for(target))
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _mode_for(target: Path) -> int:
    """The file mode a new file gets (mkstemp's 0600 is for secrets), or the replaced file's own."""
    try:
        return stat.S_IMODE(target.stat().st_mode)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


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
    try:
        paths, problem = save_outputs(request, result, args.output, film, device=device, withheld=screened.withheld)
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
    if isinstance(request, CompareStepsRequest) and request.stop_early:
        from bot.pictures.stop_early import stop_early_summary

        print(stop_early_summary(request, result.images))
    elif isinstance(request, CompareStepsRequest | CompareSchedulersRequest):
        from bot.pictures.grids import grid_rows, lora_summary
        from bot.pictures.over_seeds import seeds_summary
        from bot.pictures.sweet_spot import summary

        rows = [row for _, row in grid_rows(request, result.images)]
        if isinstance(request, CompareStepsRequest) and request.without_loras is not None:
            print(lora_summary(request, rows))
        elif isinstance(request, CompareStepsRequest) and request.seeds > 1:
            print(seeds_summary(rows, request.row_seeds))
        else:
            print(summary(rows))
    if isinstance(request, CompareGuidanceRequest):
        from bot.pictures.guidance_grid import guidance_rows, guidance_summary, is_distilled

        print(guidance_summary(guidance_rows(request, result.images), distilled=is_distilled(result.images)))
    if isinstance(request, CompareStrengthRequest):
        from bot.pictures.grids import strength_summary

        print(strength_summary(request, result.images))
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

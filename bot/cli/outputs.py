"""Where `stepgrid imagine`, `upscale` and the `compare-*` grids write: an output checked writable before the
render, the image, numbered images, labelled grid and film written each whole or not at all, and rescued to
a new temporary folder when the place asked for fails after the render."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING

from bot.errors import InvalidOption
from inference.protocol import JobResult
from inference.requests import (
    CompareSchedulersRequest,
    CompareStepsRequest,
    ComparisonRequest,
    GenerateRequest,
    Request,
)

if TYPE_CHECKING:
    from bot.pictures.grids import Grid

TEST_MODEL_NOTE = "random-weight test model: its images are noise, not art"


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
        raise InvalidOption(f"{option} {output}: {where} ({error_reason(error)}).") from None
    if output.exists() and not os.access(output, os.W_OK):
        raise InvalidOption(f"{option} {output}: the file exists and can't be overwritten.")


def error_reason(error: OSError) -> str:
    return error.strerror or type(error).__name__


class OutputLost(RuntimeError):
    """The image(s) could be written neither where asked nor anywhere else; the message says why."""


def save_outputs(
    request: Request,
    result: JobResult,
    output: Path,
    film: Path | None = None,
    *,
    grid: bytes | None = None,
    withheld: Collection[int] = (),
) -> tuple[list[Path], str | None]:
    """Write the image (or numbered images, or a comparison's `grid`, the PNG from `comparison_grid`, and the
    film) where asked, but not the images at the indexes `withheld` (nor their films); each file appears whole
    or not at all (see `write_file`). If that fails after the render, write them to a new folder in the
    temporary directory instead, so that a finished image is never lost. Returns the paths written and, when
    they were rescued, why the asked-for place failed."""
    from bot.pictures.film import film_file
    from bot.pictures.render import png_parameters

    def write(output: Path, film: Path | None) -> list[Path]:
        if isinstance(request, GenerateRequest) and set(withheld) >= set(range(len(result.images))):
            return []  # every image withheld: no file, and no folder made for one
        output.parent.mkdir(parents=True, exist_ok=True)
        if not isinstance(request, GenerateRequest):
            if grid is None:
                raise ValueError("a comparison's grid is rendered (comparison_grid) before it is saved")
            write_file(output, grid)
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
        problem = f"could not write {output} ({error_reason(error)})"
    try:
        rescue = Path(tempfile.mkdtemp(prefix="stepgrid-rescued-")) / output.name
        return write(rescue, film and rescue.with_name(film.name)), problem
    except OSError as error:
        raise OutputLost(f"{problem}, nor a copy in the temporary folder ({error_reason(error)}).") from None


def output_paths(request: Request, output: Path, film: Path | None = None) -> list[Path]:
    """Where `save_outputs` writes: the image or grid, numbered images for --count, and the film."""
    if not isinstance(request, GenerateRequest):
        return [output]
    if request.count > 1:
        return [output.with_name(f"{output.stem}-{number}{output.suffix}") for number in range(1, request.count + 1)]
    return [output] if film is None or not request.film else [output, film]


def comparison_grid(request: ComparisonRequest, result: JobResult, device: str | None) -> Grid:
    """A grid request's labelled grid, titled with the prompt and the facts every cell shares, and its words."""
    from bot.pictures.comparison import render_comparison
    from bot.pictures.grids import cell_lora_hashes

    rows_named = isinstance(request, CompareSchedulersRequest) or (
        isinstance(request, CompareStepsRequest) and request.without_loras is not None
    )
    scheduler = "" if rows_named else f" · {request.scheduler}"  # rows name their schedulers
    seeds = request.seeds if isinstance(request, CompareStepsRequest) else 1  # several: the rows name them
    facts = f"{result.model}{scheduler} · " + (f"{seeds} seeds" if seeds > 1 else f"seed {request.seed}")
    if result.is_test_model:
        facts += f" · {TEST_MODEL_NOTE}"
    hashes = cell_lora_hashes(result.images)
    return render_comparison(request, result.images, model=result.model, lora_hashes=hashes, facts=facts, device=device)


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

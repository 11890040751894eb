"""The CLI's outputs: the film at the path asked for in the format its name says, a write that fails midway leaving
the old file whole and no partial one, and an output written through a symlink keeping the link."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import resource
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from bot.cli.outputs import OutputLost, comparison_grid, save_outputs
from inference.requests import CompareStepsRequest, GenerateRequest
from tests.bot.fakes import noise_png, result_for


@pytest.mark.parametrize("name", ["fox.webp", "fox.gif", "FOX.GIF"])
def test_the_film_is_written_at_the_path_asked_for_in_the_format_its_name_says(tmp_path: Path, name: str) -> None:
    request = GenerateRequest("a fox", steps=5, width=384, height=384, film=True)
    result = result_for("job", request)
    frames = tuple(noise_png(384, 384) for _ in range(5))  # WebP would be smaller: the name decides
    result = dataclasses.replace(result, images=(dataclasses.replace(result.images[0], frames=frames),))
    paths, problem = save_outputs(request, result, tmp_path / "fox.png", tmp_path / name)
    assert problem is None and paths == [tmp_path / "fox.png", tmp_path / name]
    assert sorted(os.listdir(tmp_path)) == sorted(["fox.png", name]), "nothing else written"
    film = Image.open(tmp_path / name)
    assert (film.format, film.n_frames, film.width) == (Path(name).suffix[1:].upper(), 5, 384), "not shrunk"


@contextlib.contextmanager
def disk_full_after(size: int) -> Iterator[None]:
    """Writes past `size` bytes fail (EFBIG) in this process, as on a disk that filled up mid-write."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def test_a_write_that_fails_midway_leaves_the_old_file_whole_and_no_partial_one(tmp_path: Path) -> None:
    request = GenerateRequest("a fox", steps=2, width=256, height=256)
    result = result_for("job", request, png=noise_png)
    output = tmp_path / "fox.png"
    output.write_bytes(b"the picture from yesterday")
    with disk_full_after(4096), pytest.raises(OutputLost):  # the rescue copy in the temporary folder fails too
        save_outputs(request, result, output)
    assert os.listdir(tmp_path) == ["fox.png"], "no temporary file left behind"
    assert output.read_bytes() == b"the picture from yesterday", "not truncated"
    paths, problem = save_outputs(request, result, output)
    assert problem is None and Image.open(paths[0]).size == (256, 256) and os.listdir(tmp_path) == ["fox.png"]


def test_an_output_written_through_a_symlink_keeps_the_link(tmp_path: Path) -> None:
    request = GenerateRequest("a fox", steps=2, width=256, height=256)
    (tmp_path / "real.png").write_bytes(b"old")
    (tmp_path / "link.png").symlink_to("real.png")
    save_outputs(request, result_for("job", request), tmp_path / "link.png")
    assert (tmp_path / "link.png").is_symlink() and Image.open(tmp_path / "real.png").size == (256, 256)


def test_a_comparison_is_written_as_the_grid_rendered_once_with_its_words(tmp_path: Path) -> None:
    request = CompareStepsRequest("a fox", steps=(2, 4), width=64, height=64)
    result = result_for("job", request)
    grid = comparison_grid(request, result, "cpu")
    assert grid.summary.startswith("For this prompt and seed: "), "the words the CLI prints after the file"
    paths, problem = save_outputs(request, result, tmp_path / "grid.png", grid=grid.png)
    assert problem is None and paths == [tmp_path / "grid.png"]
    assert (tmp_path / "grid.png").read_bytes() == grid.png
    with pytest.raises(ValueError, match="comparison_grid"):
        save_outputs(request, result, tmp_path / "again.png")

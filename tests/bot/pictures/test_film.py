"""The Steps film as an animation: one captioned frame per step, within the upload limit for Discord, in
the format its file name asks for in the CLI."""

from __future__ import annotations

import io
import random

import pytest
from PIL import Image

from bot.pictures.film import downscale_note, durations, film_animation, film_file, frame_caption, source_note
from tests.a1111 import read_info_from_exif


def frames(count: int, size: int = 96, *, noisy: bool = False) -> list[bytes]:
    out = []
    rng = random.Random(count)
    for step in range(count):
        if noisy:
            image = Image.frombytes("RGB", (size, size), rng.randbytes(size * size * 3))
        else:
            image = Image.new("RGB", (size, size), (step * 20 % 256, 80, 160))
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        out.append(buffer.getvalue())
    return out


@pytest.mark.parametrize("count", [1, 4, 20])
def test_the_film_has_one_frame_per_step_and_decodes(count: int) -> None:
    film = film_animation(frames(count), "a fox", 10 * 1024 * 1024)
    image = Image.open(io.BytesIO(film.data))
    assert image.format == film.extension.upper() and film.extension in ("webp", "gif")
    assert film.size == (96, 96), "the frames' own size: the caption strip is not the picture"
    assert getattr(image, "n_frames", 1) == count
    for index in range(count):
        image.seek(index)
        image.convert("RGB")  # every frame decodes
    assert image.size[0] == 96 and image.size[1] > 96, "each frame has its caption strip under it"


def test_noisy_frames_come_as_webp_and_flat_ones_may_be_gif_when_smaller() -> None:
    assert film_animation(frames(6, noisy=True), "fox", 10**7).extension == "webp"
    film = film_animation(frames(6), "fox", 10**7)
    assert film.extension in ("webp", "gif") and Image.open(io.BytesIO(film.data)).n_frames == 6


@pytest.mark.parametrize("limit", [40_000, 15_000])
def test_a_tight_limit_shrinks_the_film_but_keeps_every_step(limit: int) -> None:
    film = film_animation(frames(10, 256, noisy=True), "fox", limit)
    image = Image.open(io.BytesIO(film.data))
    assert len(film.data) <= limit and image.n_frames == 10
    assert image.width < 256 and film.size == (image.width, image.width), "the size says how far it shrank"


def test_an_impossible_limit_is_an_error_not_an_oversized_file() -> None:
    with pytest.raises(ValueError, match="cannot fit"):
        film_animation(frames(10, 256, noisy=True), "fox", 500)


@pytest.mark.parametrize("extension", ["webp", "gif"])
def test_a_film_file_is_in_the_format_asked_for_at_the_frames_own_size(extension: str) -> None:
    noisy = frames(5, 128, noisy=True)
    assert film_animation(noisy, "fox", 10**9).extension == "webp", "the name decides, not which is smaller"
    image = Image.open(io.BytesIO(film_file(noisy, "fox", extension)))
    assert image.format == extension.upper() and image.n_frames == 5 and image.width == 128


def test_the_downscale_note_names_both_sizes_only_when_the_frames_are_smaller() -> None:
    assert downscale_note((512, 384), (1024, 768)) == "downscaled to 512×384 (the image is 1024×768)"
    assert downscale_note((512, 512), (512, 512)) is None


def test_captions_name_the_step_and_the_timing_holds_the_last_frame() -> None:
    assert frame_caption(7, 20, "café 狐") == "step 7/20 · café 狐"
    timing = durations(20)
    assert len(timing) == 20 and timing[-1] > timing[0] and 60 <= timing[0] <= 500


def test_every_frame_source_is_explained() -> None:
    assert "scheduler's own" in source_note("scheduler")
    for source, formula in (("epsilon", "ε"), ("v_prediction", "v"), ("flow", "σ·v")):
        assert "reports no x0" in source_note(source) and formula in source_note(source)


PARAMETERS = "a fox 狐 🦊\nSteps: 4, Sampler: Euler, CFG scale: 7, Seed: 42, Size: 96x96, Model: tiny"


@pytest.mark.parametrize("extension", ["webp", "gif"])
def test_a_film_file_carries_the_parameters_where_readers_look(extension: str) -> None:
    """WebP: the EXIF UserComment A1111 reads (typed UNDEFINED, as piexif needs); GIF: a comment extension."""
    film = Image.open(io.BytesIO(film_file(frames(4), "fox", extension, PARAMETERS)))
    if extension == "gif":
        assert film.info["comment"].decode("utf-8") == PARAMETERS
    else:
        assert read_info_from_exif(film.info["exif"]) == PARAMETERS


def test_the_discord_film_carries_the_parameters_in_either_format() -> None:
    for noisy in (False, True):  # flat frames come out as GIF, noisy ones as WebP
        film = film_animation(frames(6, noisy=noisy), "fox", 10**7, PARAMETERS)
        image = Image.open(io.BytesIO(film.data))
        carried = image.info["comment"].decode() if film.extension == "gif" else read_info_from_exif(image.info["exif"])
        assert carried == PARAMETERS, film.extension


def test_a_prompt_typed_on_several_lines_captions_every_frame_on_one() -> None:
    """A prompt with line breaks (the CLI's and the bot's film) used to end in Pillow's multiline ValueError."""
    prompt = "a fox\nin the snow\n\n"
    film = film_animation(frames(3), prompt, 10**7)
    assert Image.open(io.BytesIO(film.data)).n_frames == 3
    assert Image.open(io.BytesIO(film_file(frames(3), prompt, "gif"))).n_frames == 3

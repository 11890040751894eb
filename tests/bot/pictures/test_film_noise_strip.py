"""The Steps film's noise strip: under each frame, the schedule's σ at every step, this step highlighted."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from bot.pictures.film import captioned_frames, film_file, noise_strip
from bot.pictures.render import MARK

KARRAS_LIKE = (14.6, 6.1, 2.4, 0.9, 0.3, 0.09)


def frames(count: int, side: int = 128) -> list[bytes]:
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (90, 120, 160)).save(buffer, format="PNG")
    return [buffer.getvalue()] * count


def highlighted_columns(image: Image.Image) -> np.ndarray:
    return np.nonzero((np.asarray(image.convert("RGB")) == MARK).all(axis=-1).any(axis=0))[0]


def test_each_frame_gets_a_strip_whose_highlighted_bar_moves_along_the_schedule() -> None:
    plain = captioned_frames(frames(6), "a fox")
    strips = captioned_frames(frames(6), "a fox", sigmas=KARRAS_LIKE)
    assert all(s.height > p.height for s, p in zip(strips, plain, strict=True))
    positions = [highlighted_columns(frame).mean() for frame in strips]
    assert positions == sorted(positions) and positions[0] < positions[-1]


def test_bars_are_taller_where_the_noise_is_higher() -> None:
    strip = np.asarray(noise_strip(300, 40, KARRAS_LIKE, 1))
    filled = (strip != strip[0, 0]).any(axis=-1)
    heights = [filled[:, x].sum() for x in (8, 120)]  # the first bar, then the third
    assert heights[0] > heights[1] > 0


def test_sigmas_that_dont_match_the_frames_draw_no_strip() -> None:
    plain = captioned_frames(frames(3), "a fox")
    odd = captioned_frames(frames(3), "a fox", sigmas=(1.0, 0.5))
    assert [f.size for f in odd] == [f.size for f in plain]


def test_a_film_file_carries_the_strip_in_every_frame() -> None:
    data = film_file(frames(6, 96), "a fox", "gif", sigmas=KARRAS_LIKE)
    with Image.open(io.BytesIO(data)) as film:
        assert film.n_frames == 6 and film.height > 96 + 2 * 18

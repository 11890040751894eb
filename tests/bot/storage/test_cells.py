"""A grid's cells kept on disk for their Vary and Upscale: read back as written, the oldest cleared past a cap."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bot.storage.cells import CellImages


def test_kept_cells_read_back_as_written_and_a_missing_one_is_none(tmp_path: Path) -> None:
    cells = CellImages(tmp_path / "cells")
    cells.save("job1", {0: b"first", 2: b"third"})
    assert (cells.load("job1", 0), cells.load("job1", 2)) == (b"first", b"third")
    assert cells.load("job1", 1) is None, "a withheld cell is not kept"
    assert cells.load("nojob", 0) is None


def test_the_oldest_grids_cells_are_cleared_past_the_cap(tmp_path: Path) -> None:
    cells = CellImages(tmp_path / "cells", max_bytes=250)
    cells.save("old", {0: b"o" * 100})
    os.utime(tmp_path / "cells" / "old", ns=(1, 1))  # written long ago
    cells.save("mid", {0: b"m" * 100})
    os.utime(tmp_path / "cells" / "mid", ns=(2, 2))
    cells.save("new", {0: b"n" * 100})
    assert cells.load("old", 0) is None
    assert cells.load("mid", 0) == b"m" * 100 and cells.load("new", 0) == b"n" * 100


def test_a_grid_over_the_cap_alone_is_still_kept(tmp_path: Path) -> None:
    cells = CellImages(tmp_path / "cells", max_bytes=10)
    cells.save("big", {0: b"x" * 100})
    assert cells.load("big", 0) == b"x" * 100


def test_a_job_id_that_is_not_one_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a job id"):
        CellImages(tmp_path).load("../etc", 0)

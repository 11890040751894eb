"""A comparison grid's cells as the worker made them (unframed PNGs), kept on disk beside the database so
that a cell's Vary and Upscale start from the cell itself, after a restart too; the oldest grids' cells
are cleared once they take more than a cap."""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger(__name__)

_JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
# About 200 grids of twelve 512x512 cells; the oldest go first.
DEFAULT_MAX_BYTES = 1 << 30


class CellImages:
    """One folder per grid job under `folder`, a PNG per cell (`<index>.png`, 0-based in lane order)."""

    def __init__(self, folder: Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.folder = folder
        self.max_bytes = max_bytes

    def _job_folder(self, job_id: str) -> Path:
        if not _JOB_ID.fullmatch(job_id):
            raise ValueError(f"not a job id: {job_id!r}")
        return self.folder / job_id

    def save(self, job_id: str, cells: Mapping[int, bytes]) -> None:
        """Keep the grid's cells (written to a side folder and renamed: a crash leaves all of them or none),
        then clear the oldest grids' cells while all of them take more than the cap."""
        target = self._job_folder(job_id)
        partial = self.folder / f"{job_id}.part"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        for index, png in cells.items():
            (partial / f"{index}.png").write_bytes(png)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(partial, target)
        self._prune(keep=job_id)

    def load(self, job_id: str, index: int) -> bytes | None:
        """Cell `index` of the grid, or None if it is not kept (withheld, cleared, or never kept here)."""
        try:
            return (self._job_folder(job_id) / f"{index}.png").read_bytes()
        except FileNotFoundError:
            return None

    def _prune(self, *, keep: str) -> None:
        grids = []
        for folder in self.folder.iterdir():
            if not folder.is_dir() or folder.suffix == ".part":
                continue
            files = list(folder.glob("*.png"))
            grids.append((folder.stat().st_mtime_ns, folder, sum(f.stat().st_size for f in files)))
        total = sum(size for _, _, size in grids)
        for _, folder, size in sorted(grids, key=lambda grid: grid[0]):
            if total <= self.max_bytes:
                break
            if folder.name == keep:
                continue
            shutil.rmtree(folder, ignore_errors=True)
            total -= size
            log.info("cleared the kept cells of grid %s (cells over %d bytes)", folder.name, self.max_bytes)

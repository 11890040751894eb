"""Input images of accepted img2img jobs, kept on disk beside the database until the job ends, so a
worker crash or a bot restart runs the job again with the very same image."""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path

from inference.requests import MAX_INPUT_IMAGE_BYTES

log = logging.getLogger(__name__)

_JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


class InputImageMissing(ValueError):
    """A job's input image is gone from disk (or is not the one recorded): the job can't run again."""


class InputImages:
    """One PNG per unfinished job under `folder`; the ledger records only its size and SHA-256."""

    def __init__(self, folder: Path, *, max_bytes: int = MAX_INPUT_IMAGE_BYTES) -> None:
        self.folder = folder
        self.max_bytes = max_bytes

    def path(self, job_id: str) -> Path:
        if not _JOB_ID.fullmatch(job_id):
            raise ValueError(f"not a job id: {job_id!r}")
        return self.folder / f"{job_id}.png"

    def save(self, job_id: str, png: bytes) -> None:
        """Write the job's input image (atomically: a crash leaves the old file or none)."""
        if len(png) > self.max_bytes:
            raise ValueError(f"an input image of {len(png)} bytes is over the cap of {self.max_bytes}")
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.path(job_id)
        partial = path.with_suffix(".part")
        partial.write_bytes(png)
        os.replace(partial, path)

    def load(self, job_id: str, sha256: str) -> bytes:
        """The job's input image; InputImageMissing if it is gone or not the one recorded."""
        try:
            png = self.path(job_id).read_bytes()
        except FileNotFoundError:
            raise InputImageMissing(f"the input image of job {job_id} is no longer on disk") from None
        if hashlib.sha256(png).hexdigest() != sha256:
            raise InputImageMissing(f"the input image of job {job_id} on disk is not the one it was accepted with")
        return png

    def remove(self, job_id: str) -> None:
        """Forget the job's input image (the job ended); nothing to do if there is none."""
        try:
            self.path(job_id).unlink(missing_ok=True)
        except OSError:
            log.warning("could not remove the input image of job %s", job_id, extra={"job_id": job_id})


def sha256_of(png: bytes) -> str:
    return hashlib.sha256(png).hexdigest()

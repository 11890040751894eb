"""Input images of unfinished img2img jobs on disk: saved whole or not at all, read back only if unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.storage.inputs import InputImageMissing, InputImages, sha256_of

PNG = b"\x89PNG\r\n\x1a\n" + b"pixels" * 10


def test_a_saved_image_loads_back_by_its_hash_and_leaves_no_partial_file(tmp_path: Path) -> None:
    inputs = InputImages(tmp_path / "inputs")
    inputs.save("job-1", PNG)
    assert inputs.load("job-1", sha256_of(PNG)) == PNG
    assert [path.name for path in (tmp_path / "inputs").iterdir()] == ["job-1.png"]


def test_an_image_gone_or_changed_on_disk_cant_run_again(tmp_path: Path) -> None:
    inputs = InputImages(tmp_path)
    with pytest.raises(InputImageMissing, match="no longer on disk"):
        inputs.load("job-1", sha256_of(PNG))
    inputs.save("job-1", PNG)
    inputs.path("job-1").write_bytes(PNG + b"more")
    with pytest.raises(InputImageMissing, match="not the one it was accepted with"):
        inputs.load("job-1", sha256_of(PNG))


def test_an_image_over_the_cap_is_not_written(tmp_path: Path) -> None:
    inputs = InputImages(tmp_path, max_bytes=10)
    with pytest.raises(ValueError, match=r"over the cap of 10"):
        inputs.save("job-1", PNG)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("job_id", ["../etc/passwd", "", "a/b", "x" * 65, "job.png"])
def test_a_job_id_that_could_leave_the_folder_is_refused(tmp_path: Path, job_id: str) -> None:
    with pytest.raises(ValueError, match="not a job id"):
        InputImages(tmp_path).path(job_id)


def test_removing_is_idempotent(tmp_path: Path) -> None:
    inputs = InputImages(tmp_path)
    inputs.save("job-1", PNG)
    inputs.remove("job-1")
    inputs.remove("job-1")
    assert not inputs.path("job-1").exists()

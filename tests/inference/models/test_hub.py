"""Why a hub id could not be fetched: the hub unreachable, or the id unknown there."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from inference.models.hub import why_the_hub_failed
from tests.inference.fake_hub import empty_hub


def test_an_id_the_hub_does_not_have_is_said_to_not_exist() -> None:
    with empty_hub() as endpoint:
        reason = why_the_hub_failed("someone/no-such-model", endpoint=endpoint)
    assert reason == "the Hugging Face hub has no model someone/no-such-model (or it is private: then set HF_TOKEN)"


def test_a_hub_that_cannot_be_reached_is_said_to_be_unreachable() -> None:
    reason = why_the_hub_failed("someone/no-such-model", endpoint="http://127.0.0.1:1")  # nothing listens there
    assert reason is not None
    assert reason.startswith("the Hugging Face hub could not be reached (") and "check the network" in reason


def test_a_malformed_id_is_neither_a_folder_nor_a_hub_id() -> None:
    assert why_the_hub_failed("not an id!", endpoint="http://127.0.0.1:1") == (
        "not an id! is neither a local folder nor a hub id like owner/name"
    )


def stepgrid_imagine(model: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("STEPGRID_", "HF_"))}
    command = [str(Path(sys.executable).with_name("stepgrid")), "imagine", "a fox", "--model", model, "-o", "x.png"]
    return subprocess.run(
        command, cwd=tmp_path, env={**clean, "STEPGRID_MODEL_CACHE_DIR": str(tmp_path), **env},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.mark.slow
def test_loading_an_id_the_hub_does_not_have_says_so(tmp_path: Path) -> None:
    with empty_hub() as endpoint:
        result = stepgrid_imagine("someone/no-such-model", tmp_path, HF_ENDPOINT=endpoint)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "the Hugging Face hub has no model someone/no-such-model" in result.stderr, result.stderr


@pytest.mark.slow
def test_loading_while_the_hub_is_unreachable_says_so(tmp_path: Path) -> None:
    result = stepgrid_imagine("someone/no-such-model", tmp_path, HF_ENDPOINT="http://127.0.0.1:1")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "the Hugging Face hub could not be reached (" in result.stderr, result.stderr

"""The wire types: lanes, steps that run, costs, what is left out of a repr, and that the protocol and its
validation load only the standard library."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from inference.protocol import (
    SCHEDULER_NAMES,
    CompareStepsRequest,
    GenerateRequest,
    HiresFix,
    InvalidRequest,
    ModelInfo,
    ModelUnavailable,
    WorkerReady,
    img2img_steps,
    lane_steps_run,
    step_pixels,
    total_steps,
)
from inference.validation import validate, validate_for_model
from tests.inference.protocol_samples import FLUX, GOOD, PNG, SDXL_TURBO, strength_grid


def test_lanes_and_cost() -> None:
    compare = CompareStepsRequest("fox", seed=7)
    assert compare.lane_steps == (5, 10, 20, 30, 40, 50)
    assert set(compare.lane_seeds) == {7}
    assert total_steps(compare) == 155
    four = GenerateRequest("fox", steps=20, count=4, seed=2**32 - 2)
    assert four.lane_seeds == (2**32 - 2, 2**32 - 1, 0, 1)
    assert total_steps(four) == 80


def test_the_worker_ready_event_names_the_default_model() -> None:
    ready = WorkerReady(models=(FLUX, SDXL_TURBO), device="cuda:0", dtype="bfloat16", load_seconds=3.0,
                        unavailable=(ModelUnavailable("sd3", "Could not load model 'sd3'."),))  # fmt: skip
    assert ready.model == "flux" and not ready.is_test_model
    assert GenerateRequest("fox").model == "" and CompareStepsRequest("fox").model == ""


# --- the wire protocol and its validation are stdlib only ------------------------------------------------------------

PROBE = """
import sys
before = set(sys.modules)
import inference.protocol, inference.validation
print("\\n".join(sorted(set(sys.modules) - before)))
"""


def modules_loaded_by(probe: str) -> set[str]:
    """The modules a fresh interpreter loads to run `probe`'s import."""
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", probe], cwd=root, capture_output=True, text=True, check=True)
    return set(done.stdout.split())


def outside_the_standard_library(modules: set[str]) -> set[str]:
    """The loaded modules that are neither the standard library nor the protocol's stdlib-only neighbours."""
    ours = {"inference", "inference.protocol", "inference.validation", "inference.registry", "inference.clipping"}
    return {name for name in modules if name not in ours and name.partition(".")[0] not in sys.stdlib_module_names}


def test_the_protocol_loads_only_the_standard_library() -> None:
    assert outside_the_standard_library(modules_loaded_by(PROBE)) == set()


def test_the_stdlib_check_sees_other_modules() -> None:
    loaded = modules_loaded_by(PROBE.replace("import inference.protocol,", "import inference.protocol, json, numpy,"))
    assert "json" in loaded
    assert outside_the_standard_library(loaded) >= {"numpy"}


def test_steps_that_run_follow_each_familys_img2img_pipeline() -> None:
    # diffusers: SD/SDXL run int(N * strength) steps, SD 3 and FLUX start at int(N - N * strength).
    assert img2img_steps(10, 0.55, flow=False) == 5 and img2img_steps(10, 0.55, flow=True) == 6
    assert img2img_steps(4, 0.2, flow=False) == 0 and img2img_steps(4, 0.2, flow=True) == 1
    request = dataclasses.replace(GOOD, steps=4, image=PNG, strength=0.2)
    validate(request)  # one step runs on a flow model
    sd = ModelInfo("sd15", "sd", SCHEDULER_NAMES, "Euler a", 30, 7.5, (5, 10), 512, 8)
    with pytest.raises(InvalidRequest, match=r"At strength 0\.2, 4 steps run no step over the image"):
        validate_for_model(request, sd)
    validate_for_model(request, dataclasses.replace(sd, family="flux", schedulers=("Euler a",)))
    assert total_steps(dataclasses.replace(GOOD, image=PNG, strength=0.6)) == 18
    assert total_steps(GOOD) == 30


def test_the_input_image_is_left_out_of_the_requests_repr() -> None:
    assert "image" not in repr(dataclasses.replace(GOOD, image=PNG * 1000))


def test_a_hires_pass_counts_its_steps_at_its_own_size() -> None:
    request = dataclasses.replace(GOOD, steps=20, width=512, height=512, hires=HiresFix(steps=10, strength=0.5))
    assert total_steps(request) == 25
    assert step_pixels(request) == 20 * 512 * 512 + 5 * 1024 * 1024
    upscale = dataclasses.replace(request, image=PNG)
    assert total_steps(upscale) == 5 and step_pixels(upscale) == 5 * 1024 * 1024


def test_a_strength_grid_runs_row_by_row_each_lane_at_its_strength() -> None:
    request = strength_grid(steps=(10, 30))

    assert request.lane_steps == (10, 10, 10, 30, 30, 30)
    assert request.lane_strengths == (0.3, 0.6, 0.9) * 2
    assert lane_steps_run(request) == (3, 6, 9, 9, 18, 27)
    assert total_steps(request) == 72 and step_pixels(request) == 72 * 512 * 512
    validate(request)

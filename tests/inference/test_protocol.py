"""The wire types: the worker's events, and that the protocol, the requests, the models' info and their
validation load only the standard library."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from inference.model_info import ModelUnavailable
from inference.protocol import WorkerReady
from inference.requests import CompareStepsRequest, GenerateRequest
from tests.inference.protocol_samples import FLUX, SDXL_TURBO


def test_the_worker_ready_event_names_the_default_model() -> None:
    ready = WorkerReady(models=(FLUX, SDXL_TURBO), device="cuda:0", dtype="bfloat16", load_seconds=3.0,
                        unavailable=(ModelUnavailable("sd3", "Could not load model 'sd3'."),))  # fmt: skip
    assert ready.model == "flux" and not ready.is_test_model
    assert GenerateRequest("fox").model == "" and CompareStepsRequest("fox").model == ""


# --- the wire protocol, the requests, the models' info and their validation are stdlib only ---------------------------

PROBE = """
import sys
before = set(sys.modules)
import inference.requests, inference.model_info, inference.protocol, inference.validation
print("\\n".join(sorted(set(sys.modules) - before)))
"""


def modules_loaded_by(probe: str) -> set[str]:
    """The modules a fresh interpreter loads to run `probe`'s import."""
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", probe], cwd=root, capture_output=True, text=True, check=True)
    return set(done.stdout.split())


def outside_the_standard_library(modules: set[str]) -> set[str]:
    """The loaded modules that are neither the standard library nor the protocol's stdlib-only neighbours."""
    ours = {"inference", "inference.requests", "inference.model_info", "inference.protocol", "inference.validation"}
    ours |= {"inference.registry", "inference.clipping"}
    return {name for name in modules if name not in ours and name.partition(".")[0] not in sys.stdlib_module_names}


def test_the_protocol_loads_only_the_standard_library() -> None:
    assert outside_the_standard_library(modules_loaded_by(PROBE)) == set()


def test_the_stdlib_check_sees_other_modules() -> None:
    loaded = modules_loaded_by(PROBE.replace("import inference.requests,", "import inference.requests, json, numpy,"))
    assert "json" in loaded
    assert outside_the_standard_library(loaded) >= {"numpy"}

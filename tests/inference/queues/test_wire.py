"""The Redis payload codec: wire values round-trip as data, and nothing else can be read or written.

Whoever can write to Redis must not get code run in the bot or an agent: the old pickle allow-list
let `inference.protocol`'s imports through (the `math` module, `dataclass`, `field`), so a payload
could hand back a module and rewrite its globals. These payloads must all be refused.
"""

from __future__ import annotations

import json
import math
import pickle
import struct

import pytest

from inference.model_info import ModelInfo
from inference.protocol import GeneratedImage, JobFailed, JobProgress, JobResult, WorkerConfig
from inference.queues.wire import UnknownWireType, WireError, dumps, loads
from inference.requests import CompareSchedulersRequest, CompareStepsRequest, GenerateRequest

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40


def payload(tree: object, blobs: bytes = b"") -> bytes:
    """A hand-made payload in the codec's format, as someone with write access to Redis could make."""
    text = json.dumps(tree).encode()
    return struct.pack(">4sI", b"SGW1", len(text)) + text + blobs


@pytest.mark.parametrize(
    "value",
    [
        GenerateRequest("a fox 🦊", steps=3, seed=2**32 - 1, guidance=7.25, negative_prompt="blur", film=True),
        CompareStepsRequest("a boat", steps=(2, 3, 50)),
        CompareSchedulersRequest("a hill", schedulers=("Euler a", "DDIM"), steps=(5,)),
        JobResult("j1", (GeneratedImage(PNG, 7, 3, 256, 256, 0.125, frames=(PNG[:9], b"")),), 1.5, model="tiny"),
        JobFailed("j2", "Cancelled.", cancelled=True, steps_run=3),
        JobProgress("j3", lane=0, step=1, total=3, job_step=1, job_total=3, preview_png=PNG, lane_steps=((0, 1),)),
        (ModelInfo("tiny", "sd", ("Euler",), "Euler", 20, 7.5, (5, 10), 512, 8, max_steps=None),),
        (),
    ],
    ids=lambda value: type(value).__name__,
)
def test_wire_values_round_trip_exactly(value: object) -> None:
    assert loads(dumps(value)) == value


def test_bytes_travel_raw_not_inflated() -> None:
    # base64 would add a third (3.4 kB of this 10 kB PNG); what is added here is the fields' JSON
    assert len(PNG) > 10_000
    assert len(dumps(JobResult("j", (GeneratedImage(PNG, 1, 1, 8, 8, 0.0),), 0.0))) < len(PNG) + 1_000


@pytest.mark.parametrize(
    "value",
    [math, print, lambda: 0, object(), {"a": 1}, [1], {1}, WorkerConfig(model="tiny"), pickle.loads],
    ids=["module", "builtin function", "lambda", "object", "dict", "list", "set", "WorkerConfig", "a loader"],
)
def test_anything_but_wire_values_is_refused_when_written(value: object) -> None:
    with pytest.raises(WireError, match="is not a wire value"):
        dumps(value)


@pytest.mark.parametrize(
    "data",
    [
        b"\x80\x04cinference.protocol\nmath\n.",  # the old allow-list returned the math module itself
        b"\x80\x04cinference.protocol\nmath\nN}Vpi\nI3\ns\x86b.",  # ... whose globals BUILD rewrote: math.pi = 3
        b"\x80\x04cinference.protocol\ndataclass\n.",  # ... and a function from the module's imports
        b"cbuiltins\ngetattr\n(cinference.protocol\nmath\nS'pi'\ntR.",  # a getattr gadget
        b"cos\nsystem\n(S'echo pwned'\ntR.",  # the classic
        pickle.dumps(GenerateRequest("a fox")),  # a plain pickle of a wire type: an older bot's format
    ],
    ids=["module", "rewrite math.pi", "function", "getattr", "os.system", "old pickle"],
)
def test_pickles_are_refused_whatever_they_hold(data: bytes) -> None:
    with pytest.raises(WireError, match="not a Stepgrid wire payload"):
        loads(data)
    assert math.pi > 3.14


@pytest.mark.parametrize(
    "tree",
    [
        {"w": "math", "f": {}},
        {"w": "os.system", "f": {}},
        {"w": "__class__", "f": {}},
        {"w": "InvalidRequest", "f": {}},  # in inference.requests, but an exception, not a wire dataclass
        {"w": "registry", "f": {}},  # a module inference.requests imports
        {"w": "UpscaleRequest", "f": {"prompt": "fox"}},  # a newer bot's request type
        {"w": "GenerateRequest", "f": {"prompt": "fox", "__class__": "x"}},
        {"w": "GenerateRequest", "f": {"prompt": "fox", "mask_blur": 4}},  # a newer bot's field
    ],
)
def test_types_and_fields_this_version_lacks_are_refused(tree: object) -> None:
    with pytest.raises(UnknownWireType):
        loads(payload(tree))


def test_worker_config_is_no_wire_type_because_building_one_reads_files() -> None:
    with pytest.raises(UnknownWireType, match="WorkerConfig"):
        loads(payload({"w": "WorkerConfig", "f": {"model": "/etc/stepgrid/models.toml"}}))


@pytest.mark.parametrize(
    "data",
    [
        payload({"a": 1}),  # a dict that is neither bytes nor a wire value
        payload({"b": [0, 10]}, b"short"),  # bytes beyond the payload
        payload({"b": [-1, 1]}, b"x"),
        payload({"w": "GenerateRequest", "f": {}}),  # a required field missing
        b"SGW1\x00\x00\x10\x00{}",  # truncated
        b"SGW1\x00\x00\x00\x02\xff\xfe",  # not JSON
        b"",
    ],
)
def test_damaged_payloads_are_refused(data: bytes) -> None:
    with pytest.raises(WireError):
        loads(data)

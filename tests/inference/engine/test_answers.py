"""What leaves the lane engine: one progress message per iteration with an event per job, previews made off the loop,
a truncated prompt said in the result, and each job answered once (a failed encode, a cancel while encoding)."""

from __future__ import annotations

import io
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

from inference.engine.lane_engine import LaneEngine
from inference.models.loading import LoadedModel
from inference.protocol import JobEvent, JobFailed, JobProgress, JobResult, ProgressBatch
from inference.requests import CompareStepsRequest, GenerateRequest
from tests.inference.conftest import LoadTestModel
from tests.inference.lanes import RecordingEngine

SIZE = 256


@pytest.fixture(scope="module")
def tiny(load_test_model: LoadTestModel) -> LoadedModel:
    return load_test_model("tiny")


def test_an_iteration_sends_one_progress_message_with_one_event_per_job(tiny: LoadedModel) -> None:
    engine = RecordingEngine(tiny)
    engine.add_job("pair", GenerateRequest("fox", steps=3, scheduler="Euler", width=SIZE, height=SIZE, count=2))
    engine.add_job("grid", CompareStepsRequest("boat", steps=(2, 3), scheduler="DPM++ 2M", width=SIZE, height=SIZE))
    engine.run_until_idle()
    messages = [e for e in engine.events if isinstance(e, JobProgress | ProgressBatch)]
    assert len(messages) == len(engine.batch_sizes) == 3, "one message per engine iteration"
    assert all(isinstance(m, ProgressBatch) for m in messages)
    batches = [m for m in messages if isinstance(m, ProgressBatch)]
    assert [[e.job_id for e in batch.events] for batch in batches] == [["pair", "grid"]] * 3
    pair = [batch.events[0] for batch in batches]
    assert [e.lane_steps for e in pair] == [((0, 1), (1, 1)), ((0, 2), (1, 2)), ((0, 3), (1, 3))]
    assert [e.job_step for e in pair] == [2, 4, 6] and pair[-1].job_total == 6
    grid = [batch.events[1] for batch in batches]
    assert [e.lane_steps for e in grid] == [((1, 1),), ((0, 1), (1, 2)), ((0, 2), (1, 3))]


def test_previews_are_made_off_the_loop_and_the_first_progress_event_carries_one(
    tiny: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("inference.engine.answers.PREVIEW_INTERVAL_S", 0.0)
    engine = RecordingEngine(tiny, previews=True)
    engine.add_job("fox", GenerateRequest("fox", steps=4, scheduler="Euler", width=SIZE, height=SIZE))
    engine.step()  # asks the encoder thread for a preview; the first event waits for it
    engine.wait_encodes()
    engine.step()  # asks for the next preview, which rides on a later event
    engine.wait_encodes()
    engine.step()
    first, second, third = [e for e in engine.events if isinstance(e, JobProgress)]
    assert first.step == 1 and first.preview_png is not None
    assert Image.open(io.BytesIO(first.preview_png)).size == (128, 128)
    assert second.step == 2 and second.preview_png is None
    assert third.step == 3 and third.preview_png is not None
    engine.run_until_idle()
    assert len([e for e in engine.events if isinstance(e, JobProgress)]) == 4, "one event per iteration"


def test_an_over_long_prompt_is_truncated_and_the_result_says_so(tiny: LoadedModel) -> None:
    engine = RecordingEngine(tiny)
    engine.add_job("long", GenerateRequest("fox " * 100, steps=1, width=SIZE, height=SIZE))
    engine.add_job("short", GenerateRequest("fox", steps=1, width=SIZE, height=SIZE))
    engine.run_until_idle()
    assert engine.result("long").prompt_truncated
    assert not engine.result("short").prompt_truncated


class UnencodableEngine(RecordingEngine):
    """Decodes to an array Pillow can't turn into an image, so PNG encoding fails in its thread."""

    def decode(self, latents: torch.Tensor, model: LoadedModel, height: int, width: int) -> np.ndarray:
        return np.zeros((latents.shape[0], 2, 2, 7), dtype=np.float64)


def test_an_image_that_fails_to_encode_answers_its_job_with_a_failure(tiny: LoadedModel) -> None:
    engine = UnencodableEngine(tiny)
    engine.add_job("broken", GenerateRequest("fox", steps=1, width=SIZE, height=SIZE, count=2))
    engine.run_until_idle()
    answers = [e for e in engine.events if isinstance(e, JobResult | JobFailed)]
    assert len(answers) == 1 and isinstance(answers[0], JobFailed)
    assert "internal error" in answers[0].message and not answers[0].cancelled


def test_a_job_cancelled_while_its_images_encode_is_answered_once_as_cancelled(tiny: LoadedModel) -> None:
    release = threading.Event()
    encoder = ThreadPoolExecutor(max_workers=1)
    encoder.submit(release.wait)  # holds the only encoder thread
    events: list[JobEvent] = []
    engine = LaneEngine(tiny, events.append, encoder=encoder, previews=False)
    engine.add_job("late", GenerateRequest("fox", steps=2, width=SIZE, height=SIZE))
    while not engine.idle:
        engine.step()
    assert engine.cancel("late"), "denoising is over but the image is still encoding"
    release.set()
    engine.wait_encodes()
    encoder.shutdown()
    answers = [e for e in events if isinstance(e, JobResult | JobFailed)]
    assert len(answers) == 1 and isinstance(answers[0], JobFailed) and answers[0].cancelled
    assert answers[0].steps_run == 2

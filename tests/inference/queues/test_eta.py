"""The ETA estimator: rates by key, batched lane counts, the forecast over a queue, rounding, and no
ETA without a measurement."""

from __future__ import annotations

import asyncio
import time

import pytest

from inference.protocol import JobProgress, JobQueued, JobResult, StepRate, WorkerConfig
from inference.queues.base import FairJobQueue, QueuedJob
from inference.queues.eta import RateBook, Work, calls_left, forecast, rounded_seconds
from inference.queues.local import LocalJobQueue
from inference.requests import GenerateRequest
from tests.workers import started_queue


def rate(lanes: int, seconds: float, *, model: str = "tiny", size: int = 256, device: str = "cpu") -> StepRate:
    return StepRate(model, size, size, lanes, seconds, device)


def work(job_id: str, *calls: int, model: str = "tiny", size: int = 256, alone: bool = False) -> Work:
    return Work(job_id, model, size, size, list(calls), [False] * len(calls), alone=alone)


def book_of(*rates: StepRate) -> RateBook:
    book = RateBook()
    for each in rates:
        book.record(each)
    return book


def test_no_rate_for_a_model_and_size_means_no_estimate() -> None:
    book = book_of(rate(1, 0.1))
    assert book.seconds("tiny", 512, 512, 1) is None
    assert book.seconds("other", 256, 256, 1) is None
    assert forecast([work("a", 10)], [], RateBook(), lanes_cap=8) == {}


def test_rates_are_kept_per_model_size_lanes_and_device() -> None:
    book = book_of(rate(1, 0.1), rate(3, 0.2), rate(1, 0.4, size=512), rate(1, 0.02, device="NVIDIA H100"))
    assert book.seconds("tiny", 256, 256, 3, "cpu") == 0.2
    assert book.seconds("tiny", 512, 512, 1, "cpu") == 0.4
    assert book.seconds("tiny", 256, 256, 1, "NVIDIA H100") == 0.02
    assert book.seconds("tiny", 256, 256, 1, "cpu") == 0.1
    # Without a device: the one that last ran the model.
    assert book.seconds("tiny", 256, 256, 1) == 0.02


def test_an_unmeasured_lane_count_is_bounded_by_the_measured_ones() -> None:
    book = book_of(rate(2, 0.2), rate(4, 0.3))
    assert book.seconds("tiny", 256, 256, 3) == pytest.approx(0.25)  # between two: on their line
    assert book.seconds("tiny", 256, 256, 8) == pytest.approx(0.6)  # above: as if batching saved nothing
    assert book.seconds("tiny", 256, 256, 1) == pytest.approx(0.2)  # below: the smallest batch's cost


def test_bad_rates_are_not_kept() -> None:
    book = book_of(rate(1, 0.0), rate(0, 0.1), rate(1, float("nan")))
    assert book.seconds("tiny", 256, 256, 1) is None


def test_a_batched_step_costs_per_batch_so_three_jobs_together_finish_together() -> None:
    # 3 jobs of 10 steps in one batch: 10 iterations at the 3-lane rate, not 30 at the 1-lane rate.
    book = book_of(rate(1, 0.1), rate(3, 0.15))
    times = forecast([work("a", 10), work("b", 10), work("c", 10)], [], book, lanes_cap=8)
    assert {job: finish for job, (_, finish) in times.items()} == pytest.approx({"a": 1.5, "b": 1.5, "c": 1.5})


def test_lanes_that_leave_the_batch_speed_up_the_rest() -> None:
    # a: 4 steps left, b: 10. Four iterations of two lanes (0.2 s), then six of one (0.1 s).
    book = book_of(rate(1, 0.1), rate(2, 0.2))
    times = forecast([work("a", 4), work("b", 10)], [], book, lanes_cap=8)
    assert times["a"] == (None, pytest.approx(0.8))
    assert times["b"] == (None, pytest.approx(0.8 + 0.6))


def test_a_waiting_job_starts_when_the_batch_has_room_for_it() -> None:
    # Cap 2: c waits for a (the shorter) to finish, then runs beside b.
    book = book_of(rate(1, 0.1), rate(2, 0.2))
    times = forecast([work("a", 5), work("b", 10)], [work("c", 10)], book, lanes_cap=2)
    start, finish = times["c"]
    assert start == pytest.approx(1.0)
    assert finish == pytest.approx(1.0 + 5 * 0.2 + 5 * 0.1)


def test_a_grid_runs_its_cells_right_aligned() -> None:
    # Cells of 2 and 6 steps: the short one joins for the last two iterations (4 at 1 lane, 2 at 2).
    book = book_of(rate(1, 0.1), rate(2, 0.15))
    times = forecast([work("grid", 2, 6)], [], book, lanes_cap=8)
    assert times["grid"] == (None, pytest.approx(4 * 0.1 + 2 * 0.15))


def test_a_retried_job_runs_alone() -> None:
    book = book_of(rate(1, 0.1), rate(2, 0.2))
    times = forecast([work("a", 3)], [work("retry", 3, alone=True), work("b", 3)], book, lanes_cap=8)
    assert times["retry"] == (pytest.approx(0.3), pytest.approx(0.6))
    assert times["b"] == (pytest.approx(0.6), pytest.approx(0.9))


def test_a_job_behind_one_that_cannot_be_priced_gets_no_estimate() -> None:
    book = book_of(rate(1, 0.1))
    times = forecast([work("a", 3)], [work("big", 3, size=1024), work("b", 3)], book, lanes_cap=1)
    assert "a" in times
    assert "big" not in times and "b" not in times


def test_several_engines_share_the_batch() -> None:
    # Two agents with 4 lanes each: 8 one-lane jobs run as two batches of 4 in parallel.
    book = book_of(rate(4, 0.2), rate(8, 0.4))
    jobs = [work(str(i), 10) for i in range(8)]
    times = forecast([], jobs, book, lanes_cap=8, engines=2)
    assert times["7"] == (0.0, pytest.approx(10 * 0.2))


def test_second_order_schedulers_call_the_denoiser_twice_a_step() -> None:
    assert calls_left((10, 10), ("Euler", "Heun"), {0: 4, 1: 4}) == [6, 12]


@pytest.mark.parametrize(
    ("seconds", "rounded"),
    [(0.2, 1), (7.4, 7), (12.4, 12), (22.4, 20), (23, 25), (58, 60), (90, 120), (119, 120), (1499, 1500), (4790, 4800)],
)
def test_estimates_are_rounded_as_people_read_them(seconds: float, rounded: int) -> None:
    assert rounded_seconds(seconds) == rounded


# --- accuracy on the real worker -----------------------------------------------------------------

ACCURACY_STEPS = 30  # enough iterations that the rate, not one iteration's noise, decides
ACCURACY_SIZE = 256  # big enough that denoising, not per-event overhead, is most of a job's time


async def run_batch(queue: LocalJobQueue, tag: str) -> list[tuple[float | None, float]]:
    """Three one-image jobs submitted together (one busy batch); per job its ETA at its first progress
    event and the time from that event to its result."""
    requests = [GenerateRequest(f"a fox {tag} {i}", steps=ACCURACY_STEPS, scheduler="Euler", seed=i,
                                width=ACCURACY_SIZE, height=ACCURACY_SIZE) for i in range(3)]  # fmt: skip
    ids = [queue.submit(request, user_id=f"member {i}") for i, request in enumerate(requests)]
    if tag == "learning":
        assert [queue.estimate(job_id) for job_id in ids] == [None] * 3  # nothing measured yet: no ETA

    async def follow(job_id: str) -> tuple[float | None, float]:
        eta: float | None = None
        seen_at = None
        async for event in queue.events(job_id):
            if isinstance(event, JobProgress) and seen_at is None:
                seen_at = time.monotonic()
                estimate = queue.estimate(job_id)
                eta = None if estimate is None else estimate.left
            if isinstance(event, JobResult):
                assert seen_at is not None
                return eta, time.monotonic() - seen_at
        raise AssertionError(f"job {job_id} ended without a result")

    return list(await asyncio.gather(*(follow(job_id) for job_id in ids)))


@pytest.mark.slow
@pytest.mark.asyncio
async def test_the_eta_of_a_job_in_a_busy_batch_is_within_30_percent_of_its_actual_time(
    tiny_config: WorkerConfig,
) -> None:
    async with started_queue(LocalJobQueue(tiny_config, max_length=10, hang_seconds=300)) as queue:
        await run_batch(queue, "learning")
        measured = await run_batch(queue, "measured")  # the same load: the rate was learned just before
    ratios = [eta / actual if eta is not None else None for eta, actual in measured]
    assert ratios[-1] is not None and 0.7 <= ratios[-1] <= 1.3, f"ETA / actual per job: {ratios} ({measured})"


class OneAtATime(FairJobQueue):
    """The shared queue base with a backend that runs one job at a time and does nothing with it: the test
    hands the queue the progress a worker would send."""

    def _dispatch(self) -> None:
        if self._pending and not self._running:
            self._start(self._pending[0])
        self._update_positions()

    def _cancel_running(self, job: QueuedJob) -> None:
        return None

    async def start(self) -> None:
        self._ready.set()

    async def wait_ready(self) -> None:
        return None

    async def close(self) -> None:
        self._answer_unfinished()


@pytest.mark.asyncio
async def test_a_waiting_job_hears_when_it_should_start_once_a_rate_is_measured() -> None:
    queue = OneAtATime(WorkerConfig(model="tiny", max_batch_lanes=1))
    await queue.start()
    running = queue.submit(GenerateRequest("a fox", steps=10, width=64, height=64, model="tiny"), user_id="a")
    waiting = queue.submit(GenerateRequest("a cat", steps=10, width=64, height=64, model="tiny"), user_id="b")
    assert queue._jobs[waiting].events.get_nowait() == JobQueued(waiting, 1)
    assert queue.estimate(running) is None and queue.estimate(waiting) is None  # nothing measured yet

    rate = StepRate("tiny", 64, 64, 1, 0.5, "cpu")
    queue._on_progress(queue._jobs[running], JobProgress(running, 0, 4, 10, 4, 10, rate=rate))
    assert queue._jobs[waiting].events.get_nowait() == JobQueued(waiting, 1)  # told again: now with a start
    started = queue.estimate(waiting)
    assert started is not None and started.starts_in == pytest.approx(3.0, abs=0.5)  # 6 steps left at 0.5 s
    assert started.left == pytest.approx(8.0, abs=0.5)
    left = queue.estimate(running)
    assert left is not None and left.starts_in is None and left.left == pytest.approx(3.0, abs=0.5)

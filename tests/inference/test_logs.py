"""One log setup for the bot and the worker: the level, text or JSON lines, the job id on every line about a job."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import multiprocessing
import os
from collections.abc import Iterator

import pytest

from inference.logs import FORMAT_VARIABLE, LEVEL_VARIABLE, configure_logging, job_context
from inference.protocol import JobFailed, Shutdown, SubmitJob, WorkerConfig, WorkerReady
from inference.requests import GenerateRequest
from inference.worker import worker_main


@pytest.fixture
def restore_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Give back the root logger (pytest's own handlers) and the environment after the test."""
    monkeypatch.delenv(LEVEL_VARIABLE, raising=False)
    monkeypatch.delenv(FORMAT_VARIABLE, raising=False)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().err.splitlines()


@pytest.mark.usefixtures("restore_logging")
async def test_json_lines_carry_the_job_id_of_the_task_they_are_logged_in(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("bot", level="INFO", log_format="json")
    log = logging.getLogger("stepgrid.test")

    async def drive() -> None:
        await asyncio.sleep(0)
        log.info("step %d of %d", 3, 8)

    with job_context("job-in-task"):
        task = asyncio.create_task(drive())  # the task inherits the job
    log.info("not about a job")
    log.warning("named by hand", extra={"job_id": "job-by-extra"})
    await task

    records = [json.loads(line) for line in lines(capsys)]
    assert [(r["message"], r.get("job_id")) for r in records] == [
        ("not about a job", None),
        ("named by hand", "job-by-extra"),
        ("step 3 of 8", "job-in-task"),
    ]
    assert records[1]["level"] == "WARNING" and records[0]["logger"] == "stepgrid.test"
    assert records[0]["process"].startswith("bot[")


@pytest.mark.usefixtures("restore_logging")
def test_text_lines_name_the_job_and_the_level_hides_what_is_below_it(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("worker", level="WARNING", log_format="text")
    log = logging.getLogger("stepgrid.test")
    log.info("hidden")
    with job_context("abc123"):
        log.error("the batch failed")
    [line] = lines(capsys)
    assert " worker[" in line and "ERROR stepgrid.test: [job abc123] the batch failed" in line


@pytest.mark.usefixtures("restore_logging")
def test_the_choice_reaches_spawned_workers_through_the_environment(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("bot", level="debug", log_format="JSON")
    assert (os.environ[LEVEL_VARIABLE], os.environ[FORMAT_VARIABLE]) == ("DEBUG", "json")
    configure_logging("worker")  # what a spawned worker does: reads them back
    logging.getLogger("stepgrid.test").debug("from the worker")
    assert json.loads(lines(capsys)[-1])["process"].startswith("worker[")


@pytest.mark.usefixtures("restore_logging")
def test_an_exception_stays_inside_its_json_line(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("bot", level="INFO", log_format="json")
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        logging.getLogger("stepgrid.test").exception("job failed", extra={"job_id": "j1"})
    [line] = lines(capsys)
    record = json.loads(line)
    assert record["job_id"] == "j1" and "ValueError: bad\nthing" in record["exception"]


@pytest.mark.usefixtures("restore_logging")
def test_a_stack_asked_for_stays_inside_its_json_line(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("worker", level="INFO", log_format="json")

    def where_it_was_logged() -> None:
        logging.getLogger("stepgrid.test").warning("slow step", stack_info=True, extra={"job_id": "j2"})

    where_it_was_logged()
    [line] = lines(capsys)
    record = json.loads(line)
    assert record["message"] == "slow step" and record["job_id"] == "j2" and "exception" not in record
    assert record["stack"].startswith("Stack (most recent call last):") and "in where_it_was_logged" in record["stack"]


@pytest.mark.slow
def test_a_spawned_workers_stderr_is_json_lines_naming_the_job(
    tiny_config: WorkerConfig, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(LEVEL_VARIABLE, "INFO")  # what the bot exports for the worker it spawns
    monkeypatch.setenv(FORMAT_VARIABLE, "json")
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    worker = context.Process(target=worker_main, args=(theirs, dataclasses.replace(tiny_config, warmup=False)))
    worker.start()
    theirs.close()  # the worker's death reads as EOFError here, not a hang
    try:
        assert isinstance(ours.recv(), WorkerReady)
        # A scheduler the queue would have refused: the worker's own guard logs the job's failure.
        ours.send(SubmitJob("job-7", GenerateRequest("fox", steps=2, scheduler="Nope", width=256, height=256)))
        answers = iter(ours.recv, None)
        failed = next(answer for answer in answers if isinstance(answer, JobFailed))
        assert failed.job_id == "job-7"
        ours.send(Shutdown())
    finally:
        worker.join(timeout=120)
        if worker.is_alive():
            worker.kill()
    records = [json.loads(line) for line in capfd.readouterr().err.splitlines()]  # every line of it: JSON
    assert all(record["process"].startswith("worker[") for record in records), records
    [about_the_job] = [record for record in records if "job_id" in record]
    assert about_the_job["job_id"] == "job-7" and about_the_job["message"] == "could not start job job-7"
    assert "Traceback" in about_the_job["exception"]

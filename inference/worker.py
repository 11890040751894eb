"""GPU worker process main: load the registry's models once, warm up, report ready, run jobs, emit events.

Started by `LocalJobQueue` with the spawn context (CUDA can't be re-initialised in a forked child).
It talks to the bot over one duplex pipe: requests in, events out. Between engine iterations it
takes new jobs and cancellations, so lanes join and leave a running batch.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING

from inference.logs import configure_logging
from inference.protocol import (
    INTERNAL_ERROR_MESSAGE,
    CancelJob,
    JobEvent,
    JobFailed,
    ProgressBatch,
    Shutdown,
    SubmitJob,
    WorkerConfig,
    WorkerFailed,
    WorkerReady,
)
from inference.requests import GenerateRequest, InvalidRequest

if TYPE_CHECKING:  # the bot imports this module to name the spawn target: keep torch out of it
    from inference.engine.lane_engine import LaneEngine

log = logging.getLogger(__name__)

# Tests only: the worker starts loading its models once the file this names exists, so an end-to-end test
# sees `stepgrid run` while the model is still loading for as long as it needs (not a setting).
LOAD_GATE = "STEPGRID_TEST_LOAD_GATE"


def _quiet_libraries() -> None:
    """diffusers and transformers log errors only, through our handler (JSON too), at our level if higher:
    a model that fails to load is told once, in the worker's own line, not again in theirs."""
    import diffusers
    import transformers

    level = max(logging.ERROR, logging.getLogger().level)
    for library in (diffusers.utils.logging, transformers.logging):
        library.set_verbosity(level)
        library.disable_progress_bar()
        library.disable_default_handler()
        library.enable_propagation()


def _wait_for_load_gate() -> None:
    gate = os.environ.get(LOAD_GATE)
    if not gate:
        return
    log.info("waiting for %s to exist before loading the models (%s)", gate, LOAD_GATE)
    while not Path(gate).exists():
        time.sleep(0.02)


def worker_main(conn: Connection, config: WorkerConfig) -> None:
    """Process entry point (spawn target)."""
    configure_logging("worker")  # the bot's STEPGRID_LOG_LEVEL and STEPGRID_LOG_FORMAT, inherited
    _quiet_libraries()
    send_lock = threading.Lock()

    def send(event: JobEvent | ProgressBatch | WorkerReady | WorkerFailed) -> None:
        # Encoder threads send results while the main thread sends progress.
        with send_lock:
            conn.send(event)

    from inference.engine.lane_engine import LaneEngine
    from inference.models.loading import load_models

    _wait_for_load_gate()
    started = time.perf_counter()
    models, unavailable = load_models(config)
    if not models:
        message = (
            " ".join(item.message for item in unavailable)
            if len(unavailable) == 1
            else "No model could be loaded: " + "; ".join(f"{item.name}: {item.message}" for item in unavailable)
        )
        log.error("%s", message)
        send(WorkerFailed(message))
        return
    from inference.safety import SafetyCheckerError, load_checker

    default = models[0]
    try:
        checker = load_checker(config, default.device, default.dtype)
    except SafetyCheckerError as error:
        log.error("%s", error)
        send(WorkerFailed(str(error)))
        return
    if checker is None:
        log.warning(
            "NO IMAGE SAFETY CHECKER (STEPGRID_SAFETY_CHECKER=%s): pictures are posted unchecked in every channel",
            config.safety_checker,
        )
    else:
        log.info("image safety checker: %s (flags a score of %g or more)", checker.name, config.safety_threshold)
    engine = LaneEngine(models, send, max_batch_lanes=config.max_batch_lanes, checker=checker)
    if config.compile and not engine.model.family.compilable:
        log.warning("not compiling: the default model's family (%s) runs eagerly", engine.model.info.family)
    elif config.compile:
        log.info("compiling the denoiser for batch sizes %s (minutes, once per Inductor cache)", engine.batch_buckets)
        log.info("compiled in %.0fs", engine.compile_unet())
    if config.warmup:
        for model in models:
            warm_up(engine, model.name)
    for model in models:
        log.info(
            "ready: model %s (%s) on %s (%s) in %.1fs%s",
            model.name, model.info.family, model.device, str(model.dtype).removeprefix("torch."), model.load_seconds,
            " — RANDOM-WEIGHT TEST MODEL, images are noise" if model.is_test_model else "",
        )  # fmt: skip
    send(WorkerReady(tuple(model.info for model in models), str(default.device),
                     str(default.dtype).removeprefix("torch."), time.perf_counter() - started,
                     tuple(unavailable), safety_checker=checker.name if checker else "none"))  # fmt: skip
    try:
        _serve(conn, engine, send)
    finally:
        engine.close()


def warm_up(engine: LaneEngine, model: str = "") -> None:
    """Run one short job per model so the first user doesn't pay for lazy initialisation."""
    real_emit = engine.emit
    engine.emit = lambda event: None
    try:
        started = time.perf_counter()
        info = engine.model_for(model).info
        size = min(info.native_size, 512)
        engine.add_job("warm-up", GenerateRequest("warm-up", steps=2, scheduler="Euler", width=size, height=size,
                                                  model=model))  # fmt: skip
        engine.run_until_idle()
        log.info("warm-up of %s took %.1fs", info.name, time.perf_counter() - started)
    finally:
        engine.emit = real_emit


def _serve(conn: Connection, engine: LaneEngine, send: Callable[[JobEvent | ProgressBatch], None]) -> None:
    from inference.engine.admission import UnknownModel
    from inference.engine.input_image import UnreadableImage
    from inference.engine.lane_engine import BatchError

    def handle(message: object) -> bool:
        if isinstance(message, SubmitJob):
            try:
                engine.add_job(message.job_id, message.request)
            except (
                UnknownModel,
                InvalidRequest,
                UnreadableImage,
            ) as exc:  # the queue and bot check first; this is the worker's guard
                send(JobFailed(message.job_id, str(exc)))
            except Exception:
                log.exception("could not start job %s", message.job_id, extra={"job_id": message.job_id})
                send(JobFailed(message.job_id, INTERNAL_ERROR_MESSAGE.format(ref=message.job_id[:8])))
        elif isinstance(message, CancelJob):
            engine.cancel(message.job_id)
        elif isinstance(message, Shutdown):
            return False
        return True

    while True:
        try:
            if engine.idle and not handle(conn.recv()):
                return
            while conn.poll():
                if not handle(conn.recv()):
                    return
        except EOFError:  # the bot went away
            return
        try:
            engine.step()
        except BatchError as exc:  # the engine has answered the batch's jobs
            for job_id in exc.job_ids:
                log.error("batch failed for job %s", job_id, exc_info=exc.__cause__, extra={"job_id": job_id})

"""One log setup for the bot, the GPU worker and the agents: a level, text or JSON, the job id on job lines.

Standard library only: the worker process and the bot both use it. A line is "about a job" when it
is logged while a job is current (`job_context`, which asyncio tasks inherit) or names its job
with `extra={"job_id": ...}`; JSON lines then carry `"job_id"`, text lines `[job <id>]`.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import sys
from collections.abc import Iterator
from datetime import UTC, datetime

current_job: contextvars.ContextVar[str | None] = contextvars.ContextVar("stepgrid_job", default=None)

LEVEL_VARIABLE = "STEPGRID_LOG_LEVEL"
FORMAT_VARIABLE = "STEPGRID_LOG_FORMAT"


@contextlib.contextmanager
def job_context(job_id: str) -> Iterator[None]:
    """Lines logged inside (and in tasks created inside) are about `job_id`."""
    token = current_job.set(job_id)
    try:
        yield
    finally:
        current_job.reset(token)


class JobIdFilter(logging.Filter):
    """Gives every record a `job_id` attribute: its own `extra`, else the current job, else None."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "job_id", None) is None:
            record.job_id = current_job.get()
        return True


class TextFormatter(logging.Formatter):
    """The usual text line, with `[job <id>]` before the message on lines about a job."""

    def __init__(self, role: str) -> None:
        super().__init__(f"%(asctime)s {role}[%(process)d] %(levelname)s %(name)s: %(job)s%(message)s")

    def format(self, record: logging.LogRecord) -> str:
        job_id = getattr(record, "job_id", None)
        record.job = f"[job {job_id}] " if job_id else ""
        return super().format(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, process role, message, job_id when about a job,
    and the traceback (`exception`) and call stack (`stack`, from `stack_info=True`) when the record has them."""

    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "process": f"{self.role}[{record.process}]",
            "message": record.getMessage(),
        }
        job_id = getattr(record, "job_id", None)
        if job_id:
            line["job_id"] = job_id
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False)


def configure_logging(role: str, *, level: str | None = None, log_format: str | None = None) -> None:
    """Log to stderr at `level` in `log_format` ("text" or "json"); left out, read from the environment
    (STEPGRID_LOG_LEVEL, STEPGRID_LOG_FORMAT), which is how the spawned worker gets the bot's choice."""
    level = (level or os.environ.get(LEVEL_VARIABLE) or "INFO").upper()
    log_format = (log_format or os.environ.get(FORMAT_VARIABLE) or "text").lower()
    # Spawned workers inherit the environment: the same choice reaches them (also when it came from .env).
    os.environ[LEVEL_VARIABLE], os.environ[FORMAT_VARIABLE] = level, log_format
    handler = logging.StreamHandler()
    handler.addFilter(JobIdFilter())
    handler.setFormatter(JsonFormatter(role) if log_format == "json" else TextFormatter(role))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


def report_fatal(role: str, prog: str, message: str, *, log_format: str) -> None:
    """The one line that says why a command stopped: with JSON logs a JSON line (a `jq` pipeline reads only
    JSON; logging is set up for it if it wasn't yet), else a plain `prog: message` line."""
    if log_format == "json":
        if not any(isinstance(handler.formatter, JsonFormatter) for handler in logging.getLogger().handlers):
            configure_logging(role, log_format=log_format)
        logging.getLogger(f"stepgrid.{role}").critical("%s", message)
    else:
        print(f"{prog}: {message}", file=sys.stderr)

"""Log context (request id, job ids) and the JSON log format (``--log-format json``).

The API middleware binds each request's id for the request's run; a worker binds the ids
of the batch it runs (:func:`bind_jobs`). Context variables follow asyncio tasks (and
``asyncio.to_thread``), so every line logged while a request or batch runs carries them,
whichever module logs it. The text format stays the default; JSON puts one object per
line with ``time``, ``level``, ``logger``, ``message``, and ``request_id`` / ``job_id``
(one job) or ``job_ids`` (a batch of several) where they exist, plus ``exc_info`` text.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import Literal

LogFormat = Literal["text", "json"]

request_id_var: ContextVar[str | None] = ContextVar("pixelmill_request_id", default=None)
job_ids_var: ContextVar[tuple[str, ...]] = ContextVar("pixelmill_job_ids", default=())

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


@contextlib.contextmanager
def bound_request(request_id: str) -> Iterator[None]:
    """Lines logged inside carry ``request_id``."""
    token = request_id_var.set(request_id)
    try:
        yield
    finally:
        request_id_var.reset(token)


def bind_jobs(job_ids: Sequence[str]) -> None:
    """Lines logged from now on in this task (and tasks it starts) carry ``job_ids``; a
    worker calls it as each batch starts, and :func:`unbind_job` as each job ends."""
    job_ids_var.set(tuple(job_ids))


def unbind_job(job_id: str) -> None:
    """``job_id`` ended: lines logged from now on in this task no longer carry it."""
    jobs = job_ids_var.get()
    if job_id in jobs:
        job_ids_var.set(tuple(j for j in jobs if j != job_id))


def log_context() -> dict[str, object]:
    """The ids bound where the caller runs: ``request_id``, ``job_id`` or ``job_ids``."""
    context: dict[str, object] = {}
    if (request_id := request_id_var.get()) is not None:
        context["request_id"] = request_id
    jobs = job_ids_var.get()
    if len(jobs) == 1:
        context["job_id"] = jobs[0]
    elif jobs:
        context["job_ids"] = list(jobs)
    return context


class JsonFormatter(logging.Formatter):
    """One JSON object per line (see module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry |= log_context()
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc_info"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False, default=str)


UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")
"""The loggers uvicorn's default configuration gives handlers of their own."""
QUIET_LOGGERS = ("alembic.runtime.plugins",)
"""Library loggers whose INFO lines say nothing to an operator (alembic lists its
autogenerate plugins at every start); their warnings still show, and all of it at debug."""


def configure_logging(level: str, log_format: LogFormat = "text") -> None:
    """Root logging for a pixelmill process: ``level`` and the ``text`` or ``json`` format.

    In JSON every library's records (uvicorn's too, see ``pixelmill.cli.serve``) go
    through the root handler, so the whole log is one format.
    """
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=log_format == "json")
    if logging.getLogger().level > logging.DEBUG:  # --log-level debug still shows everything
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
    if log_format == "json":
        # A uvicorn configured earlier in this process (its default dictConfig) left text
        # handlers on its loggers and stopped them propagating: hand them back to the root.
        for name in UVICORN_LOGGERS:
            uvicorn_logger = logging.getLogger(name)
            uvicorn_logger.handlers.clear()
            uvicorn_logger.propagate = True

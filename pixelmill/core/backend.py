"""The generation backend protocol: what a worker needs from whatever makes the images.

A worker claims jobs from the store and hands their requests to a
:class:`GenerationBackend`; it never knows whether that is the local diffusers engine
(``pixelmill.engine.runner.EngineRunner``), a fake in the tests, or something remote.
Framework-free on purpose: the jobs layer and the API read a backend's state through
this module only, so neither imports the engine (nor torch) even indirectly.

The error contract of :meth:`GenerationBackend.generate_batch`:

* :class:`~pixelmill.core.errors.GenerationCanceled` when the cancel token stopped it;
* :class:`~pixelmill.core.errors.PixelmillError` subclasses for failures the backend
  understood (``GenerationFailed`` with code ``out_of_memory`` is worth another attempt,
  other codes fail the job at once);
* any other exception is a backend fault (a crash mid-job): the worker fails the batch's
  jobs with code ``backend_error`` and retries them within their ``max_attempts``.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable
from typing import Protocol

from pixelmill.core.types import GenerationRequest, JobResult, Progress

ProgressCallback = Callable[[Progress], None]
"""Called on the event loop with the denoising progress of the running batch, and with its
live previews when the backend makes them (:attr:`~pixelmill.core.types.Progress.previews`;
a backend that makes none just never fills it)."""


class BackendState(str, enum.Enum):
    """Where a backend is in its life: loading its model, serving, or failed to start."""

    loading = "loading"
    ready = "ready"
    failed = "failed"


class CancelToken:
    """Set by whoever wants a generation stopped; read by the backend between steps.

    Thread-safe: the worker sets it on the event loop, an engine thread reads it.
    """

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        """Ask the running generation to stop at its next step."""
        self._event.set()

    @property
    def canceled(self) -> bool:
        """Whether :meth:`cancel` was called."""
        return self._event.is_set()


class BackendInfo(Protocol):
    """What a ready backend serves, for ``/health`` and ``/v1/models``."""

    @property
    def model(self) -> str: ...

    @property
    def demo(self) -> bool: ...

    @property
    def device(self) -> str: ...

    @property
    def dtype(self) -> str: ...


class GenerationBackend(Protocol):
    """Makes images for a worker: start, report readiness, run batches, shut down."""

    @property
    def state(self) -> BackendState:
        """``loading`` until :meth:`start` finished, then ``ready`` or ``failed``."""
        ...

    @property
    def error(self) -> str | None:
        """Why the backend failed to start (None unless ``state`` is ``failed``)."""
        ...

    @property
    def busy(self) -> bool:
        """Whether a batch is running right now (for ``/health``)."""
        ...

    @property
    def info(self) -> BackendInfo | None:
        """What it serves once ready; None while loading or after a failed start."""
        ...

    def start(self) -> object:
        """Begin loading in the background and return at once (the result is not used)."""
        ...

    async def generate_batch(
        self,
        requests: list[GenerationRequest],
        *,
        on_progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
    ) -> list[JobResult]:
        """Generate compatible ``requests`` (equal batch keys) together; one result each,
        in order. Errors: see the module docstring."""
        ...

    def shutdown(self) -> None:
        """Stop accepting work; the running batch may finish."""
        ...

"""Runs an :class:`Engine` on its own thread so the asyncio event loop never blocks.

One runner per device, one thread per runner: every load and every generation is a
task on that thread, in order. That is what guarantees a pipeline is never used by two
requests at once, while ``/health`` and every other route stay instant.

:class:`EngineRunner` is the engine's implementation of
:class:`~pixelmill.core.backend.GenerationBackend`: workers and the API see it only
through that protocol.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor

from pixelmill.core.backend import BackendState, CancelToken, ProgressCallback
from pixelmill.core.errors import ModelUnavailable
from pixelmill.core.types import GenerationRequest, JobResult, Progress
from pixelmill.registry.models_dir import ModelRegistry
from pixelmill.settings import Settings

log = logging.getLogger(__name__)

__all__ = ["CancelToken", "EngineRunner"]


class EngineRunner:
    """Owns one engine thread; async callers submit requests and await results.

    Implements :class:`~pixelmill.core.backend.GenerationBackend`.
    """

    def __init__(self, settings: Settings, registry: ModelRegistry):
        self._settings = settings
        self._registry = registry
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pixelmill-engine")
        self._engine = None
        self.state = BackendState.loading
        self.error: str | None = None
        self.busy = False

    @property
    def info(self):
        """The engine's :class:`~pixelmill.engine.engine.EngineInfo` once ready, else None."""
        return self._engine.info if self._engine is not None and self.state is BackendState.ready else None

    def start(self) -> Future:
        """Build the engine and load its model on the engine thread (returns at once)."""
        return self._executor.submit(self._start)

    def _start(self):
        from pixelmill.engine.engine import Engine  # torch/diffusers load on the engine thread

        try:
            self._engine = Engine(self._settings, self._registry)
            info = self._engine.start()
        except Exception as exc:
            self.state, self.error = BackendState.failed, str(exc) or type(exc).__name__
            log.error("the engine could not start: %s", exc)
            raise
        self.state = BackendState.ready
        return info

    @property
    def engine(self):
        """The engine once it started; raises :class:`ModelUnavailable` before that."""
        if self._engine is None or self.state is not BackendState.ready:
            raise ModelUnavailable(self.error or "the model is still loading; retry shortly", code="model_loading")
        return self._engine

    async def generate(
        self,
        request: GenerationRequest,
        *,
        on_progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
    ) -> JobResult:
        """Run ``request`` on the engine thread; cancels the generation if the caller is."""
        results = await self.generate_batch([request], on_progress=on_progress, cancel=cancel)
        return results[0]

    async def generate_batch(
        self,
        requests: list[GenerationRequest],
        *,
        on_progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
    ) -> list[JobResult]:
        """Run compatible ``requests`` as one pipeline call on the engine thread."""
        loop = asyncio.get_running_loop()
        token = cancel or CancelToken()
        # Progress is stored at most every progress_interval_s; handing every step to the
        # event loop would only wake it (and take the GIL) for nothing, mid-generation.
        interval, last = self._settings.progress_interval_s / 2, float("-inf")

        def report(step: int, total: int) -> None:
            nonlocal last
            now = time.monotonic()
            if on_progress is not None and (now - last >= interval or step >= total):
                last = now
                loop.call_soon_threadsafe(on_progress, Progress(step=step, total=total))

        def preview(step: int, total: int, images: dict[int, bytes]) -> None:
            # Already spaced by the engine (preview_steps, at most one per MIN_GAP_S): never dropped here.
            loop.call_soon_threadsafe(on_progress, Progress(step=step, total=total, previews=images))

        wants_previews = on_progress is not None and self._settings.preview_steps > 0
        future = self._executor.submit(self._run, requests, report, token,
                                       preview if wants_previews else None)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            token.cancel()  # the waiter went away: stop at the next step
            raise

    def _run(self, requests: list[GenerationRequest], report, token: CancelToken,
             preview=None) -> list[JobResult]:
        engine = self.engine
        self.busy = True
        try:
            return engine.generate_batch(requests, on_progress=report, is_canceled=lambda: token.canceled,
                                         on_preview=preview)
        finally:
            self.busy = False

    def shutdown(self) -> None:
        """Stop accepting work; queued generations are dropped, the running one finishes."""
        self._executor.shutdown(wait=False, cancel_futures=True)

"""The common part of the fake backends: a working backend that makes tiny PNGs.

Subclasses override :meth:`FakeBackend.on_step` (to fail or stall mid-job) or
:meth:`FakeBackend.image` (to return other pixels).
"""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass

from PIL import Image

from pixelmill.core.backend import BackendState, CancelToken, ProgressCallback
from pixelmill.core.errors import GenerationCanceled
from pixelmill.core.types import GeneratedImage, GenerationRequest, JobResult, Progress


@dataclass(frozen=True)
class FakeInfo:
    """What the fake serves (the shape ``/health`` reads)."""

    model: str = "fake"
    demo: bool = False
    device: str = "cpu"
    dtype: str = "float32"


def png(width: int, height: int, color: tuple[int, int, int]) -> bytes:
    """A real PNG of one colour."""
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, "PNG")
    return buffer.getvalue()


class FakeBackend:
    """Works: ``steps`` steps of ``step_s`` seconds each, then one PNG per image."""

    def __init__(self, *, step_s: float = 0.0) -> None:
        self.step_s = step_s
        self.state = BackendState.loading
        self.error: str | None = None
        self.busy = False
        self.calls = 0  # how many batches it was asked to run
        self.info: FakeInfo | None = None

    def start(self) -> None:
        """Ready at once."""
        self.state, self.info = BackendState.ready, FakeInfo()

    def shutdown(self) -> None:
        self.state = BackendState.loading

    async def generate_batch(
        self,
        requests: list[GenerationRequest],
        *,
        on_progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
    ) -> list[JobResult]:
        self.calls += 1
        self.busy = True
        try:
            total = requests[0].steps or 4
            for step in range(1, total + 1):
                await asyncio.sleep(self.step_s)
                if cancel is not None and cancel.canceled:
                    raise GenerationCanceled("canceled between steps")
                self.on_step(step, total)
                if on_progress is not None:
                    on_progress(Progress(step=step, total=total))
            return [self.result(request) for request in requests]
        finally:
            self.busy = False

    def on_step(self, step: int, total: int) -> None:
        """Called after each step (before its progress is reported): fail here."""

    def image(self, request: GenerationRequest, index: int) -> bytes:
        """The PNG of image ``index`` of ``request``: mid-grey, never blank."""
        return png(request.width or 64, request.height or 64, (128, 128, 128))

    def result(self, request: GenerationRequest) -> JobResult:
        width, height, seed = request.width or 64, request.height or 64, max(request.seed, 0)
        images = [
            GeneratedImage(data=self.image(request, i), media_type="image/png", seed=seed + i,
                           width=width, height=height)
            for i in range(request.n)
        ]
        return JobResult(images=images, seed=seed, model="fake", width=width, height=height,
                         steps=request.steps or 4, sampler="euler", gpu_seconds=0.01)

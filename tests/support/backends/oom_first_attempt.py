"""A backend that runs out of device memory on its first batch, then has room."""

from __future__ import annotations

from pixelmill.core.errors import GenerationFailed
from tests.support.backends.base import FakeBackend


class OomFirstAttempt(FakeBackend):
    """The first batch fails the way the engine reports OOM (``out_of_memory``); later ones work."""

    def on_step(self, step: int, total: int) -> None:
        if self.calls == 1 and step == 1:
            raise GenerationFailed("the device ran out of memory; try a smaller size or n", code="out_of_memory")

"""A backend whose device holds at most ``max_images`` images per call: a larger batch
runs out of memory the way the engine reports it, a smaller one works."""

from __future__ import annotations

from pixelmill.core.errors import GenerationFailed
from tests.support.backends.base import FakeBackend


class OomAboveSize(FakeBackend):
    """Fails with ``out_of_memory`` at the first step of any call of more than ``max_images``
    images; records the image count of every call it was given in :attr:`sizes`."""

    def __init__(self, max_images: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.max_images = max_images
        self.sizes: list[int] = []

    async def generate_batch(self, requests, **kwargs):
        self.sizes.append(sum(request.n for request in requests))
        return await super().generate_batch(requests, **kwargs)

    def on_step(self, step: int, total: int) -> None:
        if step == 1 and self.sizes[-1] > self.max_images:
            raise GenerationFailed("the device ran out of memory; try a smaller size or n", code="out_of_memory")

"""A backend whose model overflows: NaN output, which is all black once cast to 8-bit."""

from __future__ import annotations

from pixelmill.core.types import GenerationRequest
from tests.support.backends.base import FakeBackend, png


class NanOutput(FakeBackend):
    """Returns an all-black PNG for every image, as an engine without a NaN check would."""

    def image(self, request: GenerationRequest, index: int) -> bytes:
        return png(request.width or 64, request.height or 64, (0, 0, 0))

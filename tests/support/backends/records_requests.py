"""A working backend that keeps every request it ran, input images included.

For tests where the subject is what reached the backend (e.g. a gateway's upstream: which
mode, strength, image and mask arrived), not the pixels made from it.
"""

from __future__ import annotations

from pixelmill.core.types import GenerationRequest, JobResult
from tests.support.backends.base import FakeBackend


class RecordsRequests(FakeBackend):
    """:class:`FakeBackend` that appends each request it ran to ``requests``."""

    def __init__(self, *, step_s: float = 0.0) -> None:
        super().__init__(step_s=step_s)
        self.requests: list[GenerationRequest] = []

    def result(self, request: GenerationRequest) -> JobResult:
        self.requests.append(request)
        return super().result(request)

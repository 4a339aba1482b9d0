"""A backend whose model fails to load (corrupt file, missing weights, no memory)."""

from __future__ import annotations

from pixelmill.core.backend import BackendState
from tests.support.backends.base import FakeBackend


class LoadFailure(FakeBackend):
    """``start`` fails: the state is ``failed`` with ``reason`` as the error."""

    def __init__(self, reason: str = "checkpoint 'broken' is not a valid safetensors file") -> None:
        super().__init__()
        self.reason = reason

    def start(self) -> None:
        self.state, self.error = BackendState.failed, self.reason

"""A backend whose steps are slow and that stops at the cancel token, like the engine."""

from __future__ import annotations

from tests.support.backends.base import FakeBackend


class SlowCancelAware(FakeBackend):
    """``step_s`` per step (a 200-step job takes 4 s); notes the step it stopped at."""

    def __init__(self, *, step_s: float = 0.02) -> None:
        super().__init__(step_s=step_s)
        self.last_step = 0

    def on_step(self, step: int, total: int) -> None:
        self.last_step = step

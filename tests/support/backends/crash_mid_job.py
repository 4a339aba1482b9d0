"""A backend that crashes mid-job: an exception no engine code expected (a bug, a driver fault)."""

from __future__ import annotations

from tests.support.backends.base import FakeBackend


class CrashMidJob(FakeBackend):
    """Raises ``RuntimeError`` at ``at_step`` for its first ``crashes`` batches (None: every one)."""

    def __init__(self, *, crashes: int | None = None, at_step: int = 2, step_s: float = 0.0) -> None:
        super().__init__(step_s=step_s)
        self.crashes, self.at_step = crashes, at_step

    def on_step(self, step: int, total: int) -> None:
        crashing = self.crashes is None or self.calls <= self.crashes
        if crashing and step == min(self.at_step, total):
            raise RuntimeError(f"simulated crash at step {step} of batch {self.calls}")

"""A working backend that notes when each of its calls started and ended, and how.

For tests where the subject is *when* the worker runs batches (e.g. that the next batch
generates while the last one is being stored), not the pixels.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from pixelmill.core.errors import GenerationCanceled
from tests.support.backends.base import FakeBackend


@dataclass
class Call:
    """One ``generate_batch`` call: its requests' seeds, ``time.monotonic()`` at its start and
    end, and how it ended (``"returned"``, ``"canceled"`` or ``None`` while it runs)."""

    seeds: list[int]
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None
    outcome: str | None = None


class RecordsTiming(FakeBackend):
    """:class:`FakeBackend` that appends a :class:`Call` per batch it was given to ``log``."""

    def __init__(self, *, step_s: float = 0.0) -> None:
        super().__init__(step_s=step_s)
        self.log: list[Call] = []

    async def generate_batch(self, requests, **kwargs):
        call = Call(seeds=[request.seed for request in requests])
        self.log.append(call)
        try:
            results = await super().generate_batch(requests, **kwargs)
            call.outcome = "returned"
            return results
        except GenerationCanceled:
            call.outcome = "canceled"
            raise
        finally:
            call.ended = time.monotonic()

"""A per-request budget of decoded pixels: one request cannot make the server decode without end.

Each upload is already capped (``--max-upload-pixels``), but a request may carry many
images (a batch of img2img jobs, control images, masks). The API opens one budget per
request (``--max-request-pixels``); the decoder charges every image's header size to it
*before* decoding, so a request over the budget is refused having decoded at most the
budget. Outside a request (CLI, engine, tests) no budget is open and nothing is charged.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from contextvars import ContextVar

from pixelmill.core.errors import PayloadTooLarge

_current: ContextVar["PixelBudget | None"] = ContextVar("pixelmill_pixel_budget", default=None)


class PixelBudget:
    """Pixels one request may still decode; thread-safe (decoding runs in a thread pool)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def charge(self, pixels: int, *, param: str) -> None:
        """Count ``pixels`` of image ``param``; :class:`PayloadTooLarge` past the limit."""
        with self._lock:
            if self.used + pixels > self.limit:
                raise PayloadTooLarge(
                    f"{param}: this request's images come to more than {self.limit:,} pixels in all "
                    f"(decoded so far {self.used:,}, this one {pixels:,}); send fewer or smaller images",
                    param=param,
                )
            self.used += pixels


@contextlib.contextmanager
def pixel_budget(limit: int) -> Iterator[PixelBudget]:
    """Open a budget of ``limit`` pixels for the code (and the tasks it starts) inside."""
    budget = PixelBudget(limit)
    token = _current.set(budget)
    try:
        yield budget
    finally:
        _current.reset(token)


def charge_pixels(pixels: int, *, param: str) -> None:
    """Charge ``pixels`` to the open budget, if any (called by the decoder before decoding)."""
    budget = _current.get()
    if budget is not None:
        budget.charge(pixels, param=param)

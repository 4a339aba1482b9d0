"""Per-key token buckets, kept in this process's memory.

Each key has a bucket of ``rate.count`` tokens that refills continuously at
``count / per_s`` tokens a second; a submission takes one token, and an empty bucket
means 429 with the seconds until the next token as ``Retry-After``. State is per API
process: with N API hosts a key can submit up to N × its rate. That is deliberate — the
limit smooths bursts cheaply; the hard, global bound is the per-key job limit
(``max_running``), which is read from the shared job store.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from pixelmill.auth.keys import Rate

MAX_BUCKETS = 10_000
"""Buckets kept at most; full (idle) ones are dropped first so memory stays bounded."""


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Token buckets by key id; thread-safe (routes may run in worker threads)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def acquire(self, key_id: str, rate: Rate) -> float:
        """Take a token: 0.0 when allowed, else the seconds to wait for the next token."""
        now = self._clock()
        refill = rate.count / rate.per_s
        with self._lock:
            bucket = self._buckets.get(key_id)
            if bucket is None:
                self._evict_if_full()
                bucket = self._buckets[key_id] = _Bucket(float(rate.count), now)
            bucket.tokens = min(float(rate.count), bucket.tokens + (now - bucket.updated) * refill)
            bucket.updated = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return 0.0
            return (1.0 - bucket.tokens) / refill

    def _evict_if_full(self) -> None:
        if len(self._buckets) < MAX_BUCKETS:
            return
        # The oldest-updated bucket has refilled the most: dropping it forgets the least.
        oldest = min(self._buckets, key=lambda k: self._buckets[k].updated)
        del self._buckets[oldest]


def retry_after_s(wait_s: float) -> int:
    """Whole seconds for a ``Retry-After`` header (at least 1)."""
    return max(1, math.ceil(wait_s))

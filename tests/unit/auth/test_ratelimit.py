"""The per-key token bucket, on a fake clock."""

from __future__ import annotations

from pixelmill.auth.keys import Rate
from pixelmill.auth.ratelimit import RateLimiter, retry_after_s


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_burst_up_to_the_rate_then_wait_for_refill():
    clock = Clock()
    limiter, rate = RateLimiter(clock), Rate(3, 60.0)  # one token every 20 s
    assert [limiter.acquire("k", rate) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.acquire("k", rate)
    assert 19.9 < wait <= 20.0 and retry_after_s(wait) == 20
    clock.now += 20
    assert limiter.acquire("k", rate) == 0.0
    assert limiter.acquire("k", rate) > 0


def test_buckets_are_per_key_and_never_exceed_capacity():
    clock = Clock()
    limiter, rate = RateLimiter(clock), Rate(2, 1.0)
    limiter.acquire("a", rate), limiter.acquire("a", rate)
    assert limiter.acquire("a", rate) > 0 and limiter.acquire("b", rate) == 0.0
    clock.now += 3600  # a long idle time refills to capacity, not beyond
    assert [limiter.acquire("a", rate) for _ in range(3)][-1] > 0


def test_retry_after_is_at_least_one_second():
    assert retry_after_s(0.01) == 1 and retry_after_s(1.2) == 2

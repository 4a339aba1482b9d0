"""Small statistics helpers: medians and percentiles without numpy's interpolation surprises."""

from __future__ import annotations

import math
import statistics


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile (0-100): a value that was actually observed.

    Nearest-rank is honest for small samples: p99 of 40 samples is the maximum, not an
    interpolation between the two largest.
    """
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def ratio(numerator: float, denominator: float) -> float:
    if not denominator or math.isnan(denominator):
        return float("nan")
    return numerator / denominator

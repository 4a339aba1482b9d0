"""The build-versus-buy algebra: pure functions, no I/O, every one unit-tested.

Symbols (per month, US dollars):

* ``c`` hosted price per image; hosted cost is ``c·N``;
* ``G`` GPU price per hour, ``r`` images per GPU-hour, ``E`` fixed monthly overhead;
  elastic self-hosting (pay the GPU-hours used) costs ``G·N/r + E``;
* the crossover volume ``N* = E / (c − G/r)``: above it self-hosting is cheaper. When
  ``c ≤ G/r`` every image costs more on our GPU than on the API, so self-hosting never wins.

A dedicated fleet rents whole GPUs by the month (``M`` each); one GPU makes at most
``capacity = r · hours_per_month · utilisation`` images, so its cost is the step function
``ceil(N / capacity) · M + E``. The dashboard (``api/static/dashboard.js``) computes none
of this: it asks ``/v1/cost/summary`` for a what-if (:mod:`pixelmill.cost.scenario`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

HOURS_PER_MONTH = 730.0
"""Cloud providers bill a month as 730 hours (8,760 / 12)."""
MAX_FLEET_STEPS = 100_000
"""Most GPU counts :func:`dedicated_crossings` walks through (bounds the work per call)."""


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{name} must be positive, got {value}")


def _check_not_negative(**values: float) -> None:
    for name, value in values.items():
        if value < 0:
            raise ValueError(f"{name} must not be negative, got {value}")


def hosted_cost(price: float, volume: float) -> float:
    """Monthly bill of a hosted API: ``c · N``."""
    _check_not_negative(price=price, volume=volume)
    return price * volume


def gpu_cost_per_image(gpu_hour: float, rate: float) -> float:
    """What one image costs in GPU time alone: ``G / r``."""
    _check_positive(rate=rate)
    _check_not_negative(gpu_hour=gpu_hour)
    return gpu_hour / rate


def elastic_cost(gpu_hour: float, rate: float, overhead: float, volume: float) -> float:
    """Monthly cost of self-hosting on GPUs paid by the hour used: ``G·N/r + E``."""
    _check_not_negative(overhead=overhead, volume=volume)
    return gpu_cost_per_image(gpu_hour, rate) * volume + overhead


def crossover_volume(price: float, gpu_hour: float, rate: float, overhead: float) -> float | None:
    """``N* = E / (c − G/r)`` images per month, or None when self-hosting never wins (``c ≤ G/r``)."""
    _check_not_negative(price=price, overhead=overhead)
    margin = price - gpu_cost_per_image(gpu_hour, rate)
    if margin <= 0:
        return None
    return overhead / margin


def gpu_capacity(rate: float, hours_per_month: float = HOURS_PER_MONTH, utilisation: float = 1.0) -> float:
    """Images one dedicated GPU makes per month: ``r · hours · utilisation``."""
    _check_positive(rate=rate, hours_per_month=hours_per_month)
    if not 0 < utilisation <= 1:
        raise ValueError(f"utilisation must be in (0, 1], got {utilisation}")
    return rate * hours_per_month * utilisation


def gpus_needed(volume: float, capacity: float) -> int:
    """Dedicated GPUs needed for ``volume`` images a month: ``ceil(N / capacity)``."""
    _check_positive(capacity=capacity)
    _check_not_negative(volume=volume)
    return math.ceil(volume / capacity)


def dedicated_cost(volume: float, gpu_month: float, capacity: float, overhead: float) -> float:
    """Monthly cost of a dedicated fleet: ``ceil(N / capacity) · M + E``."""
    _check_not_negative(gpu_month=gpu_month, overhead=overhead)
    return gpus_needed(volume, capacity) * gpu_month + overhead


@dataclass(frozen=True)
class Crossing:
    """A volume where the cheaper option changes; ``to`` is the option cheaper just above it."""

    volume: float
    to: Literal["self-hosted", "hosted"]


def dedicated_crossings(
    price: float, gpu_month: float, capacity: float, overhead: float, max_volume: float
) -> list[Crossing]:
    """Where a dedicated fleet starts and stops beating the hosted API, up to ``max_volume``.

    With ``k`` GPUs (volumes in ``((k−1)·cap, k·cap]``) the fleet costs ``k·M + E`` while the
    API costs ``c·N``, so the fleet wins on that step from ``(k·M + E) / c`` on. Each new GPU
    raises the fleet's cost by ``M`` at once, so the hosted API can win again just past a step:
    the answer is a list of crossings (empty when the fleet never wins below ``max_volume``).
    """
    _check_positive(price=price, capacity=capacity)
    _check_not_negative(gpu_month=gpu_month, overhead=overhead, max_volume=max_volume)
    steps = math.ceil(max_volume / capacity)
    if steps > MAX_FLEET_STEPS:
        raise ValueError(f"max_volume needs {steps} GPUs; at most {MAX_FLEET_STEPS} are considered")
    crossings: list[Crossing] = []
    winning = False  # at volume 0 nothing is spent either way; the API is the default
    for k in range(1, steps + 1):
        low, high = (k - 1) * capacity, min(k * capacity, max_volume)
        threshold = (k * gpu_month + overhead) / price
        if winning and threshold > low:
            crossings.append(Crossing(low, "hosted"))  # the k-th GPU's price hands the lead back
            winning = False
        if not winning and threshold < high:
            crossings.append(Crossing(max(low, threshold), "self-hosted"))
            winning = True
    return crossings


# ---- the few-step what-if -------------------------------------------------------------------


@dataclass(frozen=True)
class StepsModel:
    """How the rate ``r`` depends on the number of denoising steps.

    ``seconds_per_image(steps) = fixed_s + per_step_s · steps``, hence
    ``r(steps) = 3600 / seconds_per_image(steps)``. ``basis`` says where the numbers come
    from: ``measured`` (a least-squares line through the ledger's step counts) or
    ``assumed`` (one measurement only, time taken as proportional to steps: ``fixed_s = 0``).
    """

    fixed_s: float
    per_step_s: float
    basis: Literal["measured", "assumed"]
    anchor_steps: int | None = None
    """``assumed`` only: the measured step count the proportionality is anchored at."""

    def rate(self, steps: int) -> float:
        """Images per GPU-hour at ``steps`` denoising steps."""
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        seconds = self.fixed_s + self.per_step_s * steps
        if seconds <= 0:
            raise ValueError(f"the steps model predicts {seconds:.3g} s per image at {steps} steps")
        return 3600.0 / seconds


def proportional_steps_model(rate: float, steps: int) -> StepsModel:
    """The assumption ``r ∝ 1/steps``, anchored at one measured ``rate`` for ``steps``."""
    _check_positive(rate=rate, steps=steps)
    return StepsModel(fixed_s=0.0, per_step_s=3600.0 / rate / steps, basis="assumed", anchor_steps=steps)


def fit_steps_model(rates: dict[int, float], weights: dict[int, float] | None = None) -> StepsModel | None:
    """Fit seconds-per-image against steps from measured rates per step count.

    Two or more step counts: a (weighted) least-squares line, ``basis="measured"``; it keeps
    the per-image cost that does not depend on steps (text encoders, VAE decode) instead of
    assuming it away. If the fit is unusable (a negative per-step time, from noisy data) or
    only one step count was seen, fall back to proportionality. None when ``rates`` is empty.
    """
    if not rates:
        return None
    weights = weights or {}
    points = [(s, 3600.0 / r, weights.get(s, 1.0)) for s, r in sorted(rates.items())]
    if len(points) >= 2:
        total = sum(w for _, _, w in points)
        mean_x = sum(w * x for x, _, w in points) / total
        mean_y = sum(w * y for _, y, w in points) / total
        sxx = sum(w * (x - mean_x) ** 2 for x, _, w in points)
        sxy = sum(w * (x - mean_x) * (y - mean_y) for x, y, w in points)
        slope = sxy / sxx
        intercept = mean_y - slope * mean_x
        if slope > 0 and intercept + slope >= 0:
            return StepsModel(fixed_s=max(intercept, 0.0), per_step_s=slope, basis="measured")
    anchor = max(points, key=lambda p: p[2])[0]  # the most-used step count anchors the assumption
    return proportional_steps_model(rates[anchor], anchor)


# ---- the verdict ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """Where a volume stands against the crossover, in numbers and in one sentence."""

    volume: float
    crossover: float | None
    hosted_cost: float
    self_hosted_cost: float
    saving: float
    """``hosted − self-hosted`` per month: positive when self-hosting is cheaper."""
    winner: Literal["self-hosted", "hosted", "tie"]
    message: str


def _money(value: float) -> str:
    return f"${value:,.0f}" if abs(value) >= 100 else f"${value:,.2f}"


def verdict(price: float, gpu_hour: float, rate: float, overhead: float, volume: float) -> Verdict:
    """Compare hosting and elastic self-hosting at ``volume`` images per month."""
    hosted = hosted_cost(price, volume)
    own = elastic_cost(gpu_hour, rate, overhead, volume)
    n_star = crossover_volume(price, gpu_hour, rate, overhead)
    saving = hosted - own
    winner = "self-hosted" if saving > 0 else "hosted" if saving < 0 else "tie"
    at = f"at {volume:,.0f} images/month"
    if n_star is None:
        per_image = gpu_cost_per_image(gpu_hour, rate)
        message = (
            f"self-hosting never wins: GPU time alone costs ${per_image:.4f}/image, "
            f"not below the hosted ${price:.4f}/image; {at} hosting saves {_money(-saving)}/month"
        )
    elif winner == "self-hosted":
        message = f"{at} you are past the crossover of {n_star:,.0f}: self-hosting saves {_money(saving)}/month"
    elif winner == "hosted":
        message = (
            f"{at} you are below the crossover of {n_star:,.0f}: "
            f"the hosted API is cheaper by {_money(-saving)}/month"
        )
    else:
        message = f"{at} you are at the crossover of {n_star:,.0f}: both cost {_money(own)}/month"
    return Verdict(volume, n_star, hosted, own, saving, winner, message)

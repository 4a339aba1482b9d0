"""What-if scenarios on top of a :class:`~pixelmill.cost.report.CostReport`.

The dashboard's sliders change the assumptions (``c``, ``G``, ``r``, ``E``, steps, ``N``);
the verdict, ``N*`` and the effective rate for them are computed here, by the same
functions as ``pixelmill cost report`` and ``/v1/cost/summary``, so the page never shows a
second opinion. Unchanged assumptions keep the report's exact values: the scenario of a
report with no overrides has the report's own verdict.
"""

from __future__ import annotations

import math

from pydantic import BaseModel

from pixelmill.cost import model as m
from pixelmill.cost.report import CostReport

DEFAULT_STEPS = 30
"""The reference step count when the ledger has no measured step count (no rate yet)."""


class ScenarioDedicated(BaseModel):
    """The dedicated-fleet step curve at the scenario's rate."""

    gpu_month: float
    capacity: float
    gpus_needed: int
    cost_month: float


class Scenario(BaseModel):
    """The assumptions of one what-if and everything that follows from them."""

    price: float
    gpu_hour: float
    rate: float
    """``r`` at :attr:`reference_steps` (measured, or assumed)."""
    overhead: float
    volume: float
    steps: int
    reference_steps: int
    """The step count the measured ``r`` stands for: the ledger's most used one."""
    rate_at_steps: float
    """``r`` at :attr:`steps` under the report's steps model (``r`` itself at the reference)."""
    gpu_cost_per_image: float
    crossover: float | None
    verdict: dict
    dedicated: ScenarioDedicated | None


def reference_steps(report: CostReport) -> int:
    """The step count with the most images in the ledger (``DEFAULT_STEPS`` without any).

    With several models, that of the model whose steps model the report carries (the one
    with most images): the step counts of other models are not on its line."""
    main = report.what_if_by_model[0].model if report.what_if_by_model else None
    images: dict[int, int] = {}
    for row in report.rates:
        if main is None or row.model == main:
            images[row.steps] = images.get(row.steps, 0) + row.images
    return max(images, key=lambda s: (images[s], -s)) if images else DEFAULT_STEPS


def rate_at_steps(rate: float, reference: int, steps: int, steps_model: m.StepsModel | None) -> float:
    """``r`` at ``steps`` given ``r`` at ``reference`` steps: time per image follows the model.

    Without a model (no ledger data) time per image is taken as proportional to steps.
    At the reference itself ``r`` is returned unchanged, not recomputed (no rounding).
    """
    if steps == reference:
        return rate
    model = steps_model or m.proportional_steps_model(rate, reference)
    reference_rate = model.rate(reference)
    # A rate so small that its seconds per image overflow to infinity gives 0 here: an
    # impossible assumption (ValueError: the API answers 400), not a division by zero.
    if not math.isfinite(reference_rate) or reference_rate <= 0:
        raise ValueError(f"the rate at {reference} steps is not a usable number of images per GPU-hour")
    return rate * model.rate(steps) / reference_rate


def what_if(
    report: CostReport, *, price: float | None = None, gpu_hour: float | None = None, rate: float | None = None,
    overhead: float | None = None, steps: int | None = None, volume: float | None = None,
) -> Scenario | None:
    """The scenario of ``report`` with the given assumptions changed (None: keep the report's).

    None when no rate is known: the ledger measured none and ``rate`` was not given.
    Raises ValueError for an impossible assumption (a zero rate, a negative price, …).
    """
    r = report.rate if rate is None else rate
    if r is None:
        return None
    c = report.reference_price if price is None else price
    g = report.self_hosted.gpu_hour if gpu_hour is None else gpu_hour
    e = report.self_hosted.overhead_month if overhead is None else overhead
    n = report.trailing_volume if volume is None else volume
    reference = reference_steps(report)
    s = reference if steps is None else steps
    steps_model = m.StepsModel(**report.steps_model) if report.steps_model else None
    effective = rate_at_steps(r, reference, s, steps_model)
    verdict = m.verdict(c, g, effective, e, n)
    return Scenario(
        price=c, gpu_hour=g, rate=r, overhead=e, volume=n, steps=s, reference_steps=reference,
        rate_at_steps=effective, gpu_cost_per_image=m.gpu_cost_per_image(g, effective),
        crossover=verdict.crossover, verdict=vars(verdict), dedicated=_dedicated(report, effective, e, n),
    )


def _dedicated(report: CostReport, rate: float, overhead: float, volume: float) -> ScenarioDedicated | None:
    fleet = report.dedicated
    if fleet is None:
        return None
    capacity = m.gpu_capacity(rate, fleet.hours_per_month, fleet.utilisation)
    return ScenarioDedicated(
        gpu_month=fleet.gpu_month, capacity=capacity, gpus_needed=m.gpus_needed(volume, capacity),
        cost_month=m.dedicated_cost(volume, fleet.gpu_month, capacity, overhead),
    )

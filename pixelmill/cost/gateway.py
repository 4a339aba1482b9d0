"""The gateway's cost truth: actual spend by backend, the counterfactuals, N* per model.

Pure: ledger records and prices in, a :class:`GatewayCosts` out. Per job:

* a **local** job cost ``gpu_seconds × G / 3600``; hosted it would have cost the price of
  the backend that serves its model (else the reference offer) per image;
* an **upstream** job cost what the backend charges (``upstream_cost``, recorded when it
  finished); locally it would have cost ``images × G / r``, with ``r`` measured on this
  fleet for that model (else the fleet's overall rate; unknown without any);
* a **shadow** run (a sample of local traffic also sent upstream) is spend too, shown on
  its own line; it serves no client, so it is in neither counterfactual.

``saving`` is ``all hosted − actual``. Per model, ``N* = E / (c − G/r)`` (the crossover of
:func:`pixelmill.cost.model.crossover_volume`) against its trailing 30-day volume: a model
still served upstream whose volume crossed N* is flagged "move this model home"; a model
served locally whose volume fell below N* is flagged too (hosted is cheaper there).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta

from pydantic import BaseModel

from pixelmill.core.types import JobRecord
from pixelmill.cost import model as m

LOCAL = "local"
MOVE_HOME = "move this model home"
BELOW = "below N*: hosted is cheaper at this volume"


class MonthSpend(BaseModel):
    """One calendar month (UTC) of the gateway's traffic."""

    month: str
    by_backend: dict[str, float]
    shadow: float
    actual: float
    all_hosted: float
    all_local: float | None
    saving: float


class ModelRow(BaseModel):
    """One model: where it runs, its volume, its measured rate and its crossover."""

    model: str
    policy: str
    backend: str | None
    images_local: int
    images_upstream: int
    trailing_volume: int
    rate: float | None
    rate_source: str
    price_per_image: float | None
    n_star: float | None
    flag: str | None
    shadow_runs: int = 0
    """Shadow runs of this model (samples of local jobs also run upstream)."""
    latency_local_s: float | None = None
    """Mean seconds from submit to finish of its local jobs."""
    latency_upstream_s: float | None = None
    """The same for its upstream jobs and shadow runs: the timing side of a shadow comparison."""


class GatewayCosts(BaseModel):
    """The gateway section of the cost report (``pixelmill cost report``, ``/v1/cost/summary``)."""

    months: list[MonthSpend]
    total: MonthSpend
    models: list[ModelRow]


def _month(moment: datetime) -> str:
    return f"{moment.year:04d}-{moment.month:02d}"


def _rates(records: list[JobRecord]) -> tuple[dict[str, float], float | None]:
    """Images per GPU-hour of local jobs, per model and overall."""
    images: dict[str, int] = defaultdict(int)
    seconds: dict[str, float] = defaultdict(float)
    for record in records:
        if record.route == LOCAL and record.gpu_seconds:
            images[record.model or "?"] += record.images
            seconds[record.model or "?"] += record.gpu_seconds
    per_model = {name: images[name] * 3600 / seconds[name] for name in seconds if seconds[name] > 0}
    total_s = sum(seconds.values())
    return per_model, (sum(images.values()) * 3600 / total_s if total_s > 0 else None)


def gateway_costs(
    records: Iterable[JobRecord], *, since: datetime, now: datetime, gpu_hour: float, overhead_month: float,
    hosted_price: Callable[[JobRecord], float | None], routes: Mapping[str, tuple[str, str | None]],
    trailing_days: int = 30,
) -> GatewayCosts:
    """Spend and counterfactuals of the succeeded ``records`` finished in ``[since, now]``.

    ``hosted_price(record)`` is the per-image price the record's model has (or would
    have) hosted; ``routes`` maps a model to its ``(policy, backend)``.
    """
    records = list(records)
    rates, fleet_rate = _rates(records)
    months: dict[str, dict] = {}
    trailing_start = now - timedelta(days=trailing_days)
    volume: dict[str, dict[str, int]] = defaultdict(lambda: {"local": 0, "upstream": 0, "trailing": 0, "shadow": 0})
    latency: dict[tuple[str, bool], list[float]] = defaultdict(list)
    prices: dict[str, float] = {}
    for record in records:
        finished = record.finished_at or record.created_at
        model = record.model or "?"
        price = hosted_price(record)
        if price is not None:
            prices.setdefault(model, price)
        if record.shadow_of is None and trailing_start <= finished <= now:
            volume[model]["trailing"] += record.images
        if not (since <= finished <= now):
            continue
        month = months.setdefault(_month(finished), {"by": defaultdict(float), "shadow": 0.0, "hosted": 0.0,
                                                     "local": 0.0, "local_known": True})
        latency[(model, record.route == LOCAL)].append((finished - record.created_at).total_seconds())
        if record.shadow_of is not None:
            month["shadow"] += record.upstream_cost or 0.0
            volume[model]["shadow"] += 1
            continue
        rate = rates.get(model, fleet_rate)
        if record.route == LOCAL:
            volume[model]["local"] += record.images
            cost = (record.gpu_seconds or 0.0) * gpu_hour / 3600
            month["local"] += cost
            month["hosted"] += (price or 0.0) * record.images
        else:
            volume[model]["upstream"] += record.images
            cost = record.upstream_cost or 0.0
            month["hosted"] += cost
            if rate:
                month["local"] += record.images * gpu_hour / rate
            else:
                month["local_known"] = False
        month["by"][record.route] += cost
    rows = [_spend(name, values) for name, values in sorted(months.items())]
    total = _spend("total", _sum(months.values()))
    models = []
    for name in sorted(volume):
        row = _model_row(name, volume[name], routes.get(name, (LOCAL, None)), rates, fleet_rate, prices.get(name),
                         gpu_hour, overhead_month)
        local_s, upstream_s = latency.get((name, True)), latency.get((name, False))
        models.append(row.model_copy(update={
            "shadow_runs": volume[name]["shadow"],
            "latency_local_s": round(sum(local_s) / len(local_s), 3) if local_s else None,
            "latency_upstream_s": round(sum(upstream_s) / len(upstream_s), 3) if upstream_s else None,
        }))
    return GatewayCosts(months=rows, total=total, models=models)


def _sum(months: Iterable[dict]) -> dict:
    total = {"by": defaultdict(float), "shadow": 0.0, "hosted": 0.0, "local": 0.0, "local_known": True}
    for month in months:
        for backend, spend in month["by"].items():
            total["by"][backend] += spend
        for key in ("shadow", "hosted", "local"):
            total[key] += month[key]
        total["local_known"] = total["local_known"] and month["local_known"]
    return total


def _spend(name: str, values: dict) -> MonthSpend:
    actual = sum(values["by"].values()) + values["shadow"]
    return MonthSpend(month=name, by_backend={k: round(v, 6) for k, v in sorted(values["by"].items())},
                      shadow=round(values["shadow"], 6), actual=round(actual, 6),
                      all_hosted=round(values["hosted"], 6),
                      all_local=round(values["local"], 6) if values["local_known"] else None,
                      saving=round(values["hosted"] - actual, 6))


def _model_row(name: str, volume: dict[str, int], route: tuple[str, str | None], rates: dict[str, float],
               fleet_rate: float | None, price: float | None, gpu_hour: float, overhead: float) -> ModelRow:
    policy, backend = route
    rate, source = (rates[name], "measured") if name in rates else (fleet_rate, "fleet") if fleet_rate else (None, "none")
    n_star = m.crossover_volume(price, gpu_hour, rate, overhead) if rate and price is not None else None
    flag = None
    served_upstream = policy in ("upstream", "local-then-upstream") and volume["upstream"] > 0
    if served_upstream and n_star is not None and volume["trailing"] >= n_star:
        flag = MOVE_HOME
    elif policy in (LOCAL, "shadow") and volume["local"] > 0 and rate and price is not None:
        if n_star is None or volume["trailing"] < n_star:
            flag = BELOW
    return ModelRow(model=name, policy=policy, backend=backend, images_local=volume["local"],
                    images_upstream=volume["upstream"], trailing_volume=volume["trailing"], rate=rate,
                    rate_source=source, price_per_image=price, n_star=n_star, flag=flag)

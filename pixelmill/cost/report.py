"""The cost report: the ledger and the configuration turned into one JSON-able object.

``pixelmill cost report``, ``pixelmill cost plot``, ``GET /v1/cost/summary`` (and so the
dashboard) and the crossover alerts all read a :class:`CostReport` built here, so they
cannot disagree.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from pathlib import Path

from pydantic import BaseModel

from pixelmill.cost import model as m
from pixelmill.cost.gateway import GatewayCosts, gateway_costs
from pixelmill.cost.invoice import Invoice
from pixelmill.cost.ledger import TRAILING_DAYS, LedgerSummary, RateKey, Usage, read_ledger
from pixelmill.cost.prices import CostConfig, CostConfigError, HostedOffer, build_config
from pixelmill.jobs.store import JobStore
from pixelmill.settings import Settings

DAYS_PER_MONTH = 30.0
"""The overhead ``E`` is per month; a period of ``d`` days carries ``E·d/30`` of it."""
WHAT_IF_STEPS = (1, 2, 4, 8, 20, 30, 50)
"""Step counts the report shows the few-step what-if for."""


class RateRow(BaseModel):
    """A measured rate ``r`` for one (model, size, steps)."""

    model: str
    width: int
    height: int
    steps: int
    jobs: int
    images: int
    gpu_seconds: float
    rate: float | None


class OfferRow(BaseModel):
    """One hosted offer against the ledger: its bill for the same images, its crossover."""

    provider: str
    model: str
    name: str
    unit: str
    price_per_image: float
    checked: date
    source: str
    note: str
    would_have_cost: float
    crossover: float | None
    verdict: str | None


class KeyRow(BaseModel):
    """Volume and cost of one API key (``None``: requests made without a key)."""

    api_key_id: str | None
    images: int
    gpu_seconds: float
    self_hosted_gpu_cost: float
    hosted_cost: float


class WhatIfRow(BaseModel):
    """The rate and crossover at another step count."""

    steps: int
    rate: float
    crossover: float | None


class ModelWhatIf(BaseModel):
    """The few-step what-if of one model, from that model's own step counts only."""

    model: str
    images: int
    measured_steps: list[int]
    """Step counts the ledger measured a rate at for this model."""
    basis: str
    """``measured`` (a line fitted to this model's step counts) or ``assumed`` (r ∝ 1/steps)."""
    steps_model: dict
    what_if: list[WhatIfRow]


class Dedicated(BaseModel):
    """The dedicated-fleet variant: GPUs rented by the month."""

    gpu_month: float
    hours_per_month: float
    utilisation: float
    capacity: float
    gpus_needed: int
    cost_month: float
    crossings: list[dict]


class SelfHosted(BaseModel):
    """The self-hosted side: configured prices and what the period cost."""

    gpu_hour: float
    overhead_month: float
    gpu_cost: float
    overhead: float
    total: float
    per_image: float | None


class CostReport(BaseModel):
    """Everything ``pixelmill cost report --json`` prints (and ``/v1/cost/summary`` returns)."""

    since: datetime
    until: datetime
    days: float
    jobs: int
    images: int
    gpu_seconds: float
    images_per_day: list[dict]
    trailing_days: int = TRAILING_DAYS
    trailing_volume: int
    rate: float | None
    rate_source: str
    rates: list[RateRow]
    self_hosted: SelfHosted
    prices_source: str
    offers: list[OfferRow]
    reference: str
    reference_price: float
    verdict: dict | None
    steps_model: dict | None
    """The few-step model of the ledger's model (with several models: the one with most images)."""
    what_if: list[WhatIfRow]
    """:attr:`steps_model`'s what-if; every model's is in :attr:`what_if_by_model`."""
    what_if_by_model: list[ModelWhatIf] = []
    """Per model, most images first: each fitted to its own step counts, never pooled."""
    dedicated: Dedicated | None
    per_key: list[KeyRow]
    invoice: dict | None
    notes: list[str]
    gateway: GatewayCosts | None = None
    """Spend by backend, counterfactuals and N* per model; only with ``--backends``."""


def config_from_settings(settings: Settings, path: Path | None = None) -> CostConfig:
    """The cost configuration of ``settings``, with the cost file ``path`` (or ``cost_config``) on top."""
    return build_config(
        gpu_hour=settings.cost_gpu_hour, overhead_month=settings.cost_overhead_month,
        gpu_month=settings.cost_gpu_month, hours_per_month=settings.cost_hours_per_month,
        utilisation=settings.cost_utilisation, compare_to=settings.cost_compare_to,
        path=path or settings.cost_config,
    )


def _hosted_bill(offer: HostedOffer, sizes: dict[tuple[int, int], int]) -> float:
    return sum(offer.price(w, h) * images for (w, h), images in sizes.items())


def _offer_row(offer: HostedOffer, ledger: LedgerSummary, config: CostConfig, rate: float | None) -> OfferRow:
    bill = _hosted_bill(offer, ledger.by_size)
    # The ledger's own size mix decides what a per-megapixel offer costs per image.
    price = bill / ledger.total.images if ledger.total.images else offer.price()
    crossover = verdict = None
    if rate:
        crossover = m.crossover_volume(price, config.gpu_hour, rate, config.overhead_month)
        verdict = m.verdict(price, config.gpu_hour, rate, config.overhead_month, ledger.trailing_volume).message
    return OfferRow(
        provider=offer.provider, model=offer.model, name=offer.name, unit=offer.unit, price_per_image=price,
        checked=offer.checked, source=offer.source, note=offer.note, would_have_cost=bill,
        crossover=crossover, verdict=verdict,
    )


def _rate_rows(by_key: dict[RateKey, Usage]) -> list[RateRow]:
    return [
        RateRow(model=k.model, width=k.width, height=k.height, steps=k.steps, jobs=u.jobs, images=u.images,
                gpu_seconds=u.gpu_seconds, rate=u.rate)
        for k, u in sorted(by_key.items(), key=lambda item: -item[1].images)
    ]


def _key_rows(ledger: LedgerSummary, config: CostConfig, reference: HostedOffer) -> list[KeyRow]:
    rows = []
    for key, usage in sorted(ledger.by_api_key.items(), key=lambda item: -item[1].images):
        sizes = {(w, h): n for (k, w, h), n in ledger.by_key_and_size.items() if k == key}
        rows.append(KeyRow(
            api_key_id=key, images=usage.images, gpu_seconds=usage.gpu_seconds,
            self_hosted_gpu_cost=config.gpu_hour * usage.gpu_seconds / 3600.0,
            hosted_cost=_hosted_bill(reference, sizes),
        ))
    return rows


def _dedicated(config: CostConfig, rate: float, price: float, volume: float) -> Dedicated | None:
    if config.gpu_month is None:
        return None
    capacity = m.gpu_capacity(rate, config.hours_per_month, config.utilisation)
    n_star = m.crossover_volume(price, config.gpu_hour, rate, config.overhead_month) or 0.0
    horizon = max(1e6, 10 * volume, 10 * n_star, 3 * capacity)
    horizon = min(horizon, capacity * m.MAX_FLEET_STEPS)
    crossings = m.dedicated_crossings(price, config.gpu_month, capacity, config.overhead_month, horizon)
    return Dedicated(
        gpu_month=config.gpu_month, hours_per_month=config.hours_per_month, utilisation=config.utilisation,
        capacity=capacity, gpus_needed=m.gpus_needed(volume, capacity),
        cost_month=m.dedicated_cost(volume, config.gpu_month, capacity, config.overhead_month),
        crossings=[{"volume": c.volume, "to": c.to} for c in crossings],
    )


def _what_if(steps_model: m.StepsModel | None, price: float, config: CostConfig) -> list[WhatIfRow]:
    if steps_model is None:
        return []
    rows = []
    for steps in WHAT_IF_STEPS:
        rate = steps_model.rate(steps)
        rows.append(WhatIfRow(steps=steps, rate=rate,
                              crossover=m.crossover_volume(price, config.gpu_hour, rate, config.overhead_month)))
    return rows


def _what_if_by_model(ledger: LedgerSummary, price: float, config: CostConfig) -> list[ModelWhatIf]:
    """One fit per model: step counts of different models are different lines (a 4-step
    FLUX-schnell is not a point on a 30-step SDXL's time-per-step line)."""
    rows = []
    for model in ledger.models():
        rates, weights = ledger.step_rates(model)
        steps_model = m.fit_steps_model(rates, weights)
        if steps_model is None:
            continue  # no GPU time recorded for this model
        images = sum(u.images for (name, _), u in ledger.by_model_steps.items() if name == model)
        rows.append(ModelWhatIf(model=model, images=images, measured_steps=sorted(rates), basis=steps_model.basis,
                                steps_model=vars(steps_model), what_if=_what_if(steps_model, price, config)))
    return rows


def _self_hosted(ledger: LedgerSummary, config: CostConfig) -> SelfHosted:
    gpu = config.gpu_hour * ledger.total.gpu_seconds / 3600.0
    overhead = config.overhead_month * ledger.days / DAYS_PER_MONTH
    total = gpu + overhead
    per_image = total / ledger.total.images if ledger.total.images else None
    return SelfHosted(gpu_hour=config.gpu_hour, overhead_month=config.overhead_month, gpu_cost=gpu,
                      overhead=overhead, total=total, per_image=per_image)


def _invoice_dict(invoice: Invoice, config: CostConfig, rate: float | None) -> dict:
    price = invoice.price_per_image
    result = {
        "rows": invoice.rows, "months": invoice.months, "images": invoice.images, "amount": invoice.amount,
        "price_per_image": price, "monthly_volume": invoice.monthly_volume, "monthly_amount": invoice.monthly_amount,
        "crossover": None, "verdict": None,
    }
    if rate:
        result["crossover"] = m.crossover_volume(price, config.gpu_hour, rate, config.overhead_month)
        result["verdict"] = m.verdict(price, config.gpu_hour, rate, config.overhead_month, invoice.monthly_volume).message
    return result


def _measured_rate(ledger: LedgerSummary, rate_override: float | None) -> tuple[float | None, str]:
    if rate_override:
        return rate_override, "given"
    return ledger.total.rate, "measured" if ledger.total.rate else "none"


def build_report(
    ledger: LedgerSummary, config: CostConfig, *, invoice: Invoice | None = None, rate: float | None = None,
    gateway: GatewayCosts | None = None,
) -> CostReport:
    """The full report for ``ledger`` under ``config``; ``rate`` overrides the measured ``r``."""
    r, rate_source = _measured_rate(ledger, rate)
    width, height = max(ledger.by_size, key=ledger.by_size.get) if ledger.by_size else (None, None)
    reference = config.reference_offer(width, height)
    offers = [_offer_row(offer, ledger, config, r) for offer in config.offers]
    price = next(row.price_per_image for row in offers if row.name == reference.name)
    by_model = _what_if_by_model(ledger, price, config)
    main = by_model[0] if by_model else None
    steps_model = m.StepsModel(**main.steps_model) if main else None
    notes = _notes(ledger, by_model, r, config)
    volume = ledger.trailing_volume
    return CostReport(
        since=ledger.since, until=ledger.until, days=ledger.days, jobs=ledger.total.jobs,
        images=ledger.total.images, gpu_seconds=ledger.total.gpu_seconds,
        images_per_day=[{"date": d.isoformat(), "images": n} for d, n in ledger.images_per_day.items()],
        trailing_volume=volume, rate=r, rate_source=rate_source, rates=_rate_rows(ledger.by_rate_key),
        self_hosted=_self_hosted(ledger, config), prices_source=config.prices_source, offers=offers,
        reference=reference.name, reference_price=price,
        verdict=vars(m.verdict(price, config.gpu_hour, r, config.overhead_month, volume)) if r else None,
        steps_model=vars(steps_model) if steps_model else None, what_if=main.what_if if main else [],
        what_if_by_model=by_model,
        dedicated=_dedicated(config, r, price, volume) if r else None,
        per_key=_key_rows(ledger, config, reference),
        invoice=_invoice_dict(invoice, config, r) if invoice else None, notes=notes, gateway=gateway,
    )


def _steps_note(steps_model: m.StepsModel, measured: list[int]) -> str:
    """Why the what-if assumes ``r ∝ 1/steps``: one step count measured, or a fit that failed.

    The what-if table always lists several step counts, so the note must say which of
    them were measured (the issue was "data for one step count only" above seven rows).
    """
    assumption = (f"few-step what-if assumes time per image proportional to steps (r ∝ 1/steps) "
                  f"from the {steps_model.anchor_steps}-step measurement")
    if len(measured) <= 1:
        return f"{assumption}: the ledger measured one step count only, so r at other step counts is extrapolated"
    counts = ", ".join(map(str, measured))
    return (f"{assumption}: the times measured at {len(measured)} step counts ({counts}) do not fit a line "
            "with a positive time per step (too few or too noisy jobs)")


def _notes(ledger: LedgerSummary, by_model: list[ModelWhatIf], rate: float | None, config: CostConfig) -> list[str]:
    notes = []
    if config.prices_source == "pixelmill defaults":
        oldest = min(offer.checked for offer in config.offers)
        notes.append(f"hosted prices are pixelmill's defaults, checked {oldest.isoformat()} or later; "
                     "set your own with --config")
    if rate is None:
        notes.append("no measured rate yet: no succeeded job recorded GPU time (pass --rate to assume one)")
    if len(by_model) > 1:
        measured = [row.model for row in by_model if row.basis == "measured"]
        assumed = [row.model for row in by_model if row.basis == "assumed"]
        notes.append("few-step what-if per model, each fitted to its own step counts: measured rates for "
                     f"{', '.join(measured) or 'none'}; r ∝ 1/steps assumed for {', '.join(assumed) or 'none'}; "
                     f"the single what-if and steps model are {by_model[0].model}'s (most images)")
    for row in by_model:
        if row.basis == "assumed":
            note = _steps_note(m.StepsModel(**row.steps_model), row.measured_steps)
            notes.append(f"{row.model}: {note}" if len(by_model) > 1 else note)
    if ledger.days < TRAILING_DAYS:
        notes.append(f"the trailing volume counts {TRAILING_DAYS} days ending now; the ledger may hold less")
    return notes


def store_report(
    store: JobStore, settings: Settings, *, since: datetime | None = None, now: datetime | None = None,
    path: Path | None = None, invoice: Invoice | None = None, rate: float | None = None,
) -> CostReport:
    """Read the ledger of ``store`` (default period: the trailing window) and build the report."""
    now = now or datetime.now(timezone.utc)
    since = since or now - timedelta(days=TRAILING_DAYS)
    ledger = read_ledger(store, since=since, now=now)
    config = config_from_settings(settings, path)
    gateway = store_gateway_costs(store, settings, config, since=since, now=now) if settings.backends else None
    return build_report(ledger, config, invoice=invoice, rate=rate, gateway=gateway)


def store_gateway_costs(
    store: JobStore, settings: Settings, config: CostConfig, *, since: datetime, now: datetime,
) -> GatewayCosts:
    """The gateway section for the ``--backends`` file: its prices and routes, no credentials."""
    from pixelmill.gateway.config import GatewayConfigError, load_config  # the gateway imports cost.prices

    try:
        gateway = load_config(settings.backends, credentials=False)
    except GatewayConfigError as exc:
        raise CostConfigError(str(exc)) from None
    serving = {model: backend for backend in gateway.backends.values() for model in backend.models}

    def hosted_price(record) -> float | None:
        offer = serving[record.model].offer if record.model in serving else config.reference_offer(
            record.width, record.height)
        return offer.price(record.width, record.height)

    start = min(since, now - timedelta(days=TRAILING_DAYS))
    records = list(store.ledger(start))
    routes = {}
    for record in records:
        route = gateway.route(record.model)
        routes[record.model or "?"] = (route.policy, route.backend)
    return gateway_costs(records, since=since, now=now, gpu_hour=config.gpu_hour,
                         overhead_month=config.overhead_month, hosted_price=hosted_price, routes=routes,
                         trailing_days=TRAILING_DAYS)

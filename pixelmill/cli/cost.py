"""``pixelmill cost``: crossover, report and plot — build versus buy from your own traffic.

Thin shells over :mod:`pixelmill.cost`: the model computes, these commands print.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from pixelmill.cli.options import COST, App, with_settings
from pixelmill.settings import Settings

cost_app = App(
    help="Build versus buy: what your images cost self-hosted and on hosted APIs, and the crossover.\n\n"
         "The cost file (--config, or --cost-config / PIXELMILL_COST_CONFIG for the server) is TOML: "
         "a [self_hosted] table (gpu_hour, overhead_month, gpu_month, hours_per_month, utilisation, "
         "compare_to) and [[offer]] tables (provider, model, price_per_image or price_per_megapixel, "
         "checked); offers in it replace the shipped price list.",
    no_args_is_help=True,
)
# Wide when piped: tables cut to 80 columns are unreadable in logs and CI output.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 140)
err = Console(stderr=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="Cost file (TOML): prices and [self_hosted].")]
SinceOpt = Annotated[str, typer.Option(help="Period: 30d, 12h, 2w or an ISO date.")]
InvoiceOpt = Annotated[Path | None, typer.Option(help="Hosted API invoice CSV: date, images, amount.")]
RateOpt = Annotated[float | None, typer.Option("--rate", help="Assume this many images per GPU-hour.")]


def _money(value: float) -> str:
    return f"${value:,.2f}" if abs(value) < 1000 else f"${value:,.0f}"


@cost_app.command()
def crossover(
    price: Annotated[float, typer.Option(help="Hosted price per image, c ($).")],
    gpu_hour: Annotated[float, typer.Option(help="GPU price per hour, G ($).")],
    rate: Annotated[float, typer.Option(help="Images per GPU-hour, r.")],
    overhead: Annotated[float, typer.Option(help="Fixed monthly overhead, E ($/month).")] = 0.0,
    volume: Annotated[float | None, typer.Option(help="Your volume, N (images/month), for a verdict.")] = None,
    steps: Annotated[int | None, typer.Option(help="Steps r was measured at (for --what-if-steps).")] = None,
    what_if_steps: Annotated[int | None, typer.Option(help="Assume r ∝ 1/steps and recompute at these steps.")] = None,
    gpu_month: Annotated[float | None, typer.Option(help="Dedicated GPU price per month, M ($).")] = None,
    utilisation: Annotated[float, typer.Option(help="Dedicated GPUs' target utilisation (0-1].")] = 0.7,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """N* = E / (c − G/r): the monthly volume above which self-hosting is cheaper."""
    from pixelmill.cost import model as m

    if what_if_steps is not None:
        if steps is None:
            raise typer.BadParameter("--what-if-steps needs --steps (the steps r was measured at)")
        rate = m.proportional_steps_model(rate, steps).rate(what_if_steps)
    try:
        n_star = m.crossover_volume(price, gpu_hour, rate, overhead)
        result: dict = {"price": price, "gpu_hour": gpu_hour, "rate": rate, "overhead": overhead,
                        "gpu_cost_per_image": m.gpu_cost_per_image(gpu_hour, rate), "crossover": n_star}
        if volume is not None:
            result["verdict"] = vars(m.verdict(price, gpu_hour, rate, overhead, volume))
        if gpu_month is not None:
            result["dedicated"] = _dedicated(m, price, gpu_month, rate, overhead, utilisation, n_star, volume)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    if as_json:
        print(json.dumps(result, indent=2))
        return
    _print_crossover(result, what_if_steps)


def _dedicated(m, price, gpu_month, rate, overhead, utilisation, n_star, volume) -> dict:
    capacity = m.gpu_capacity(rate, m.HOURS_PER_MONTH, utilisation)
    horizon = min(max(1e6, 10 * (n_star or 0), 10 * (volume or 0), 3 * capacity), capacity * m.MAX_FLEET_STEPS)
    crossings = m.dedicated_crossings(price, gpu_month, capacity, overhead, horizon)
    return {"capacity": capacity, "crossings": [vars(c) for c in crossings]}


def _print_crossover(result: dict, what_if_steps: int | None) -> None:
    steps_note = f" (at {what_if_steps} steps, assuming r ∝ 1/steps)" if what_if_steps else ""
    out.print(f"GPU cost per image: ${result['gpu_cost_per_image']:.5f}  (G/r = {result['gpu_hour']:g} / "
              f"{result['rate']:,.1f}){steps_note}")
    if result["crossover"] is None:
        out.print("crossover N*: none — self-hosting never wins (c ≤ G/r)")
    else:
        out.print(f"crossover N*: {result['crossover']:,.0f} images/month")
    if "verdict" in result:
        v = result["verdict"]
        out.print(f"at {v['volume']:,.0f} images/month: hosted {_money(v['hosted_cost'])}/month, "
                  f"self-hosted {_money(v['self_hosted_cost'])}/month")
        out.print(f"[bold]verdict:[/] {v['message']}")
    if "dedicated" in result:
        d = result["dedicated"]
        crossings = ", ".join(f"{c['volume']:,.0f} → {c['to']}" for c in d["crossings"]) or "none"
        out.print(f"dedicated fleet: {d['capacity']:,.0f} images/GPU-month; crossings: {crossings}")


def _load_report(settings: Settings, since: str, config: Path | None, invoice: Path | None, rate: float | None):
    from pixelmill.cost.invoice import InvoiceError, parse_invoice
    from pixelmill.cost.ledger import parse_since
    from pixelmill.cost.prices import CostConfigError
    from pixelmill.cost.report import store_report
    from pixelmill.jobs.store import JobStore

    now = datetime.now(timezone.utc)
    try:
        start = parse_since(since, now)
        bill = parse_invoice(invoice.read_text(encoding="utf-8")) if invoice else None
        store = JobStore.open(settings.db_url)
        return store_report(store, settings, since=start, now=now, path=config, invoice=bill, rate=rate)
    except (ValueError, InvoiceError, CostConfigError, OSError) as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None


@cost_app.command()
@with_settings(*COST)
def report(
    settings: Settings,
    since: SinceOpt = "30d",
    config: ConfigOpt = None,
    invoice: InvoiceOpt = None,
    rate: RateOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """What your images cost, what they would have cost hosted, and the crossover (reads --db)."""
    result = _load_report(settings, since, config, invoice, rate)
    if as_json:
        print(result.model_dump_json(indent=2))
        return
    from pixelmill.cost.tables import print_report

    print_report(out, result)


@cost_app.command()
@with_settings(*COST)
def plot(
    settings: Settings,
    output: Annotated[Path, typer.Option("-o", "--output", help="Image file (.png, .svg, .pdf).")] = Path("curves.png"),
    since: SinceOpt = "30d",
    config: ConfigOpt = None,
    invoice: InvoiceOpt = None,
    rate: RateOpt = None,
    volume: Annotated[float | None, typer.Option(help="Mark this volume instead of the ledger's.")] = None,
    price: Annotated[float | None, typer.Option(help="Hosted price per image instead of the reference offer's.")] = None,
) -> None:
    """Draw both cost curves, N*, your volume (and the dedicated step curve) into an image.

    With both --rate and --volume the ledger is not read: a chart of assumed numbers.
    """
    from pixelmill.cost.plot import CurveInputs, plot_curves

    inputs = _curve_inputs(settings, since, config, invoice, rate, volume, price)
    plot_curves(CurveInputs(**inputs), output)
    err.print(f"[green]wrote[/] {output}")


def _curve_inputs(settings, since, config, invoice, rate, volume, price) -> dict:
    from pixelmill.cost import model as m
    from pixelmill.cost.report import config_from_settings

    if rate is not None and volume is not None and invoice is None:
        cfg = config_from_settings(settings, config)
        offer = cfg.reference_offer()
        c = price if price is not None else offer.price()
        name, bill = ("hosted API" if price is not None else f"hosted ({offer.name})"), None
    else:
        result = _load_report(settings, since, config, invoice, rate)
        if result.rate is None:
            err.print("[red]error:[/] the ledger has no measured rate yet; pass --rate")
            raise typer.Exit(2)
        cfg = config_from_settings(settings, config)
        rate, volume = result.rate, volume if volume is not None else result.trailing_volume
        c = price if price is not None else result.reference_price
        name = "hosted API" if price is not None else f"hosted ({result.reference})"
        bill = (result.invoice["monthly_volume"], result.invoice["monthly_amount"]) if result.invoice else None
    capacity = m.gpu_capacity(rate, cfg.hours_per_month, cfg.utilisation) if cfg.gpu_month else None
    return {"price": c, "gpu_hour": cfg.gpu_hour, "rate": rate, "overhead": cfg.overhead_month, "volume": volume,
            "gpu_month": cfg.gpu_month, "capacity": capacity, "offer_name": name, "invoice": bill}

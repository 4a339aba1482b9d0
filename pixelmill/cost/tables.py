"""Rich tables for ``pixelmill cost report``."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from pixelmill.cost.report import CostReport


def _money(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"${value:,.0f}"
    return f"${value:,.2f}" if abs(value) >= 1 else f"${value:.4f}"


def _volume(value: float | None) -> str:
    return "never" if value is None else f"{value:,.0f}"


def _offers_table(report: CostReport) -> Table:
    own = report.self_hosted
    table = Table(title=f"{report.images:,} images since {report.since:%Y-%m-%d} ({report.days:.1f} days)")
    for column in ("option", "price", "checked", "cost of these images", "per image", "N* (images/month)"):
        table.add_column(column, justify="left" if column in ("option", "price") else "right")
    table.add_row(
        "[bold]self-hosted (this server)[/]", f"${own.gpu_hour:g}/GPU-h + {_money(own.overhead_month)}/month", "",
        f"{_money(own.gpu_cost)} GPU + {_money(own.overhead)} overhead = {_money(own.total)}",
        _money(own.per_image), "",
    )
    for offer in report.offers:
        marker = " *" if offer.name == report.reference else ""
        table.add_row(f"{offer.name}{marker}", offer.unit, offer.checked.isoformat(), _money(offer.would_have_cost),
                      _money(offer.price_per_image), _volume(offer.crossover) if report.rate else "-")
    return table


def _rates_table(report: CostReport) -> Table:
    table = Table(title="measured rate r = images / GPU-hours")
    for column in ("model", "size", "steps", "jobs", "images", "GPU-s", "r (images/GPU-h)"):
        table.add_column(column, justify="left" if column in ("model", "size") else "right")
    for row in report.rates:
        table.add_row(row.model, f"{row.width}x{row.height}", str(row.steps), str(row.jobs), str(row.images),
                      f"{row.gpu_seconds:,.1f}", _volume(row.rate))
    return table


def _keys_table(report: CostReport) -> Table:
    table = Table(title=f"per API key (hosted: {report.reference})")
    for column in ("API key", "images", "GPU-s", "self-hosted GPU cost", "hosted cost"):
        table.add_column(column, justify="left" if column == "API key" else "right")
    for row in report.per_key:
        table.add_row(row.api_key_id or "(no key)", f"{row.images:,}", f"{row.gpu_seconds:,.1f}",
                      _money(row.self_hosted_gpu_cost), _money(row.hosted_cost))
    return table


def _what_if_basis(report: CostReport) -> str:
    """How the what-if got r at other step counts: a fitted line, or the r ∝ 1/steps assumption."""
    lines = []
    for row in report.what_if_by_model:
        prefix = f"{row.model}: " if len(report.what_if_by_model) > 1 else "few-step what-if: "
        if row.basis == "measured":
            counts = ", ".join(map(str, row.measured_steps))
            lines.append(f"{prefix}time per step fitted to the measured step counts {counts}")
        else:
            anchor = row.steps_model.get("anchor_steps")
            lines.append(f"{prefix}r ∝ 1/steps assumed from the {anchor}-step measurement (see the notes)")
    return "\n".join(lines)


def _what_if_table(report: CostReport) -> Table:
    several = len(report.what_if_by_model) > 1
    table = Table(title="few-step what-if per model (each fitted to its own step counts)" if several
              else "few-step what-if")
    columns = ("model", "basis", "steps", "r (images/GPU-h)", "N* (images/month)") if several else (
        "steps", "r (images/GPU-h)", "N* (images/month)")
    for column in columns:
        table.add_column(column, justify="left" if column in ("model", "basis") else "right")
    for model in report.what_if_by_model if several else ():
        for row in model.what_if:
            basis = "measured" if row.steps in model.measured_steps else (
                "fitted line" if model.basis == "measured" else "r ∝ 1/steps")
            table.add_row(model.model, basis, str(row.steps), f"{row.rate:,.0f}", _volume(row.crossover))
    for row in () if several else report.what_if:
        table.add_row(str(row.steps), f"{row.rate:,.0f}", _volume(row.crossover))
    return table


def _gateway_tables(report: CostReport) -> list[Table]:
    """Monthly spend by backend with the counterfactuals, and N* per model (``--backends``)."""
    costs = report.gateway
    backends = sorted({name for row in [*costs.months, costs.total] for name in row.by_backend})
    spend = Table(title="gateway: actual spend by backend, and what all-hosted / all-local would have cost")
    for column in ("month", *backends, "shadow", "actual", "all hosted", "all local", "saving"):
        spend.add_column(column, justify="left" if column == "month" else "right")
    for row in [*costs.months, costs.total]:
        spend.add_row(row.month, *(_money(row.by_backend.get(b, 0.0)) for b in backends), _money(row.shadow),
                      _money(row.actual), _money(row.all_hosted), _money(row.all_local), _money(row.saving))
    models = Table(title="gateway: per model, N* from the measured r")
    for column in ("model", "policy", "local images", "upstream images", "trailing N", "r", "price", "N*", "flag"):
        models.add_column(column, justify="left" if column in ("model", "policy", "flag") else "right")
    for row in costs.models:
        models.add_row(row.model, row.policy + (f" ({row.backend})" if row.backend else ""), f"{row.images_local:,}",
                       f"{row.images_upstream:,}", f"{row.trailing_volume:,}",
                       f"{_volume(row.rate)} ({row.rate_source})" if row.rate else "-", _money(row.price_per_image),
                       _volume(row.n_star) if row.rate else "-", f"[bold]{row.flag}[/]" if row.flag else "")
    return [spend, models]


def print_report(console: Console, report: CostReport) -> None:
    """Print the report as tables and a verdict line."""
    for table in _gateway_tables(report) if report.gateway else ():
        console.print(table)
    console.print(_offers_table(report))
    console.print(f"* reference offer for the verdict; prices from {report.prices_source}")
    console.print(f"trailing {report.trailing_days}-day volume N = {report.trailing_volume:,} images; "
                  f"r = {_volume(report.rate) if report.rate else 'unknown'} images/GPU-hour ({report.rate_source})")
    if report.rates:
        console.print(_rates_table(report))
    if report.what_if:
        console.print(_what_if_table(report))
        console.print(_what_if_basis(report))
    if report.per_key:
        console.print(_keys_table(report))
    if report.dedicated:
        d = report.dedicated
        crossings = ", ".join(f"{c['volume']:,.0f} → {c['to']}" for c in d.crossings) or "none"
        console.print(f"dedicated fleet: {d.capacity:,.0f} images/GPU-month, {d.gpus_needed} GPU(s) now, "
                      f"{_money(d.cost_month)}/month; crossings: {crossings}")
    if report.invoice:
        inv = report.invoice
        console.print(f"your invoice: {inv['monthly_volume']:,.0f} images/month at {_money(inv['price_per_image'])}"
                      f"/image; N* at that price: {_volume(inv['crossover'])}; {inv['verdict'] or ''}")
    for note in report.notes:
        console.print(f"[dim]note: {note}[/]")
    message = report.verdict["message"] if report.verdict else "no verdict: no measured rate yet"
    console.print(f"[bold]verdict ({report.reference}):[/] {message}")

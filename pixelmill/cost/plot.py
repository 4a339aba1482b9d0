"""The cost curves as a picture: hosted vs self-hosted cost against monthly volume.

matplotlib with the Agg backend (no display needed); both axes logarithmic so a volume of
100 and one of 10 million fit on one readable chart.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pixelmill.cost import model as m


@dataclass(frozen=True)
class CurveInputs:
    """What one chart shows; ``gpu_month`` set adds the dedicated-fleet step curve."""

    price: float
    gpu_hour: float
    rate: float
    overhead: float
    volume: float | None = None
    gpu_month: float | None = None
    capacity: float | None = None
    offer_name: str = "hosted API"
    invoice: tuple[float, float] | None = None
    """``(monthly volume, monthly amount)`` from an invoice, drawn as a point."""


def volume_range(inputs: CurveInputs) -> tuple[float, float]:
    """The x range: around the crossover and the current volume, at least 100 … 1,000,000."""
    n_star = m.crossover_volume(inputs.price, inputs.gpu_hour, inputs.rate, inputs.overhead)
    marks = [v for v in (n_star, inputs.volume, inputs.invoice[0] if inputs.invoice else None) if v]
    high = max([1e6, *(20 * v for v in marks)])
    low = min([100.0, *(v / 10 for v in marks)])
    return low, high


def _label(text: str) -> str:
    """Escape dollar signs: two of them in one label would start matplotlib's math mode."""
    return text.replace("$", r"\$")


def _money(value: float, _pos: object = None) -> str:
    for size, suffix in ((1e6, "M"), (1e3, "k")):
        if value >= size:
            return f"${value / size:g}{suffix}"
    return f"${value:g}"


def _count(value: float, _pos: object = None) -> str:
    for size, suffix in ((1e6, "M"), (1e3, "k")):
        if value >= size:
            return f"{value / size:g}{suffix}"
    return f"{value:g}"


def plot_curves(inputs: CurveInputs, output: Path, *, title: str | None = None) -> Path:
    """Draw the chart for ``inputs`` into ``output`` (PNG, SVG or PDF by its suffix)."""
    import matplotlib

    matplotlib.use("Agg")  # never a window: this runs on servers and in CI
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    low, high = volume_range(inputs)
    n = np.geomspace(low, high, 400)
    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=120)
    try:
        ax.plot(n, inputs.price * n, color="#d62728", lw=2.2,
                label=_label(f"{inputs.offer_name}: ${inputs.price:.4g}/image"))
        elastic = m.gpu_cost_per_image(inputs.gpu_hour, inputs.rate) * n + inputs.overhead
        ax.plot(n, elastic, color="#1f77b4", lw=2.2,
                label=_label(f"self-hosted, elastic: ${inputs.gpu_hour:g}/GPU-h ÷ {inputs.rate:,.0f} images/GPU-h"
                             f" + ${inputs.overhead:,.0f}/month"))
        _draw_dedicated(ax, inputs, n)
        _draw_marks(ax, inputs)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(_count))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: _label(_money(v))))
        ax.set_xlim(low, high)
        ax.set_xlabel("volume (images/month)")
        ax.set_ylabel("cost ($/month)")
        ax.set_title(title or "Build versus buy: monthly cost against volume")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(loc="upper left", fontsize=8.5, framealpha=0.95)
        fig.tight_layout()
        output = Path(output)
        output.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(output)
    finally:
        plt.close(fig)
    return output


def _draw_dedicated(ax, inputs: CurveInputs, n: np.ndarray) -> None:
    if inputs.gpu_month is None or not inputs.capacity:
        return
    gpus = np.ceil(n / inputs.capacity)
    ax.step(n, gpus * inputs.gpu_month + inputs.overhead, where="post", color="#2ca02c", lw=1.6, ls="--",
            label=_label(f"self-hosted, dedicated: ${inputs.gpu_month:,.0f}/GPU-month, "
                         f"{inputs.capacity:,.0f} images/GPU-month"))


def _draw_marks(ax, inputs: CurveInputs) -> None:
    n_star = m.crossover_volume(inputs.price, inputs.gpu_hour, inputs.rate, inputs.overhead)
    if n_star:
        cost = inputs.price * n_star
        ax.axvline(n_star, color="#444", ls=":", lw=1.2)
        ax.plot([n_star], [cost], "o", color="black", zorder=5)
        ax.annotate(_label(f"crossover N* = {n_star:,.0f} images/month\n(${cost:,.0f}/month)"), (n_star, cost),
                    xytext=(12, -34), textcoords="offset points", fontsize=9,
                    bbox={"boxstyle": "round", "fc": "white", "ec": "#888"})
    else:
        ax.text(0.98, 0.04, "self-hosting never wins (c ≤ G/r)", transform=ax.transAxes, ha="right", fontsize=10)
    if inputs.volume:
        ax.axvline(inputs.volume, color="#9467bd", lw=1.6, label=f"your trailing 30-day volume: {inputs.volume:,.0f}")
    if inputs.invoice:
        volume, amount = inputs.invoice
        ax.plot([volume], [amount], "s", color="#ff7f0e", ms=8, zorder=5,
                label=_label(f"your invoice: {volume:,.0f} images for ${amount:,.0f}/month"))

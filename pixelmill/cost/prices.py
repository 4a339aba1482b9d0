"""Hosted price tables and the self-hosted side of the comparison.

A cost file is TOML; every part is optional::

    [self_hosted]
    gpu_hour = 1.20            # G, $ per GPU-hour (elastic: pay the hours used)
    overhead_month = 2000      # E, $ per month that does not scale with images
    gpu_month = 900            # M, $ per dedicated GPU per month (enables the step curve)
    hours_per_month = 730
    utilisation = 0.7          # share of a dedicated GPU's hours that does useful work
    compare_to = "stability/stable-image-core"   # the offer verdicts and alerts use

    [[offer]]
    provider = "acme"
    model = "sdxl"
    price_per_image = 0.02     # or price_per_megapixel = 0.015
    checked = "2026-11-01"     # when the price was compared with its source

Offers in the file replace the shipped defaults (``prices.toml`` in this package);
``[self_hosted]`` values override the ``cost_*`` settings.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from datetime import date
from importlib import resources
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from pixelmill.cost.model import HOURS_PER_MONTH

DEFAULT_PRICES = "prices.toml"
"""The price table shipped in this package."""
_SELF_HOSTED_KEYS = {"gpu_hour", "overhead_month", "gpu_month", "hours_per_month", "utilisation", "compare_to"}


class CostConfigError(ValueError):
    """A cost file or setting that cannot be used; the message names the file and key."""


@dataclass(frozen=True)
class HostedOffer:
    """One hosted API's price: per image, or per megapixel of output."""

    provider: str
    model: str
    checked: date
    price_per_image: float | None = None
    price_per_megapixel: float | None = None
    source: str = ""
    note: str = ""

    @property
    def name(self) -> str:
        """``provider/model``, how ``compare_to`` names an offer."""
        return f"{self.provider}/{self.model}"

    def price(self, width: int | None = None, height: int | None = None) -> float:
        """Price of one image of ``width`` × ``height`` (per-megapixel offers need the size)."""
        if self.price_per_image is not None:
            return self.price_per_image
        if not width or not height:
            width = height = 1024  # hosted APIs' usual default size
        return self.price_per_megapixel * width * height / 1e6  # type: ignore[operator]

    @property
    def unit(self) -> str:
        """How the offer is billed, for tables: ``$0.030/image`` or ``$0.035/MP``."""
        if self.price_per_image is not None:
            return f"${self.price_per_image:.4g}/image"
        return f"${self.price_per_megapixel:.4g}/MP"


@dataclass(frozen=True)
class CostConfig:
    """Everything the comparison needs besides the ledger."""

    gpu_hour: float
    overhead_month: float
    offers: tuple[HostedOffer, ...]
    gpu_month: float | None = None
    hours_per_month: float = HOURS_PER_MONTH
    utilisation: float = 0.7
    compare_to: str | None = None
    prices_source: str = "pixelmill defaults"
    """Where the offers came from: ``pixelmill defaults`` or the path of the user's file."""
    overrides: dict[str, Any] = field(default_factory=dict)

    def reference_offer(self, width: int | None = None, height: int | None = None) -> HostedOffer:
        """The offer verdicts and alerts use: ``compare_to``, else the cheapest (the hardest to beat)."""
        if self.compare_to:
            for offer in self.offers:
                if offer.name == self.compare_to:
                    return offer
            names = ", ".join(o.name for o in self.offers)
            raise CostConfigError(f"compare_to {self.compare_to!r} is not a configured offer ({names})")
        return min(self.offers, key=lambda o: o.price(width, height))


def _parse_offer(raw: dict[str, Any], where: str) -> HostedOffer:
    try:
        offer = HostedOffer(
            provider=str(raw["provider"]), model=str(raw["model"]), checked=_parse_date(raw["checked"]),
            price_per_image=_optional_float(raw.get("price_per_image")),
            price_per_megapixel=_optional_float(raw.get("price_per_megapixel")),
            source=str(raw.get("source", "")), note=str(raw.get("note", "")),
        )
    except KeyError as exc:
        raise CostConfigError(f"{where}: an [[offer]] lacks {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise CostConfigError(f"{where}: offer {raw.get('provider')}/{raw.get('model')}: {exc}") from None
    if (offer.price_per_image is None) == (offer.price_per_megapixel is None):
        raise CostConfigError(f"{where}: offer {offer.name} needs exactly one of price_per_image, price_per_megapixel")
    if (offer.price_per_image or offer.price_per_megapixel or 0) <= 0:
        raise CostConfigError(f"{where}: offer {offer.name} needs a positive price")
    return offer


def parse_offer(raw: dict[str, Any], where: str) -> HostedOffer:
    """One offer from a table with the ``[[offer]]`` keys (``provider``, ``model``, ``checked``,
    one of ``price_per_image``/``price_per_megapixel``); the gateway's backends use it too."""
    return _parse_offer(raw, where)


def _parse_date(value: Any) -> date:
    # TOML has a date type; a quoted "YYYY-MM-DD" is accepted too.
    return value if isinstance(value, date) else date.fromisoformat(str(value))


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def parse_cost_file(text: str, where: str) -> tuple[tuple[HostedOffer, ...], dict[str, Any]]:
    """The offers and ``[self_hosted]`` values of a cost file's ``text`` (``where`` names it in errors)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CostConfigError(f"{where}: {exc}") from None
    offers = tuple(_parse_offer(raw, where) for raw in data.get("offer", []))
    own = dict(data.get("self_hosted", {}))
    unknown = set(own) - _SELF_HOSTED_KEYS
    if unknown:
        raise CostConfigError(f"{where}: unknown [self_hosted] keys {sorted(unknown)}")
    return offers, own


def default_offers() -> tuple[HostedOffer, ...]:
    """The price table shipped with pixelmill (see the dates and notes in it)."""
    text = resources.files("pixelmill.cost").joinpath(DEFAULT_PRICES).read_text(encoding="utf-8")
    offers, _ = parse_cost_file(text, f"pixelmill/cost/{DEFAULT_PRICES}")
    return offers


def build_config(
    *, gpu_hour: float, overhead_month: float, gpu_month: float | None = None,
    hours_per_month: float = HOURS_PER_MONTH, utilisation: float = 0.7, compare_to: str | None = None,
    path: Path | None = None,
) -> CostConfig:
    """A :class:`CostConfig` from settings values, with the cost file at ``path`` (if any) on top."""
    config = CostConfig(
        gpu_hour=gpu_hour, overhead_month=overhead_month, offers=default_offers(), gpu_month=gpu_month,
        hours_per_month=hours_per_month, utilisation=utilisation, compare_to=compare_to,
    )
    if path is None:
        return config
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CostConfigError(f"cannot read cost file {path}: {exc.strerror}") from None
    offers, own = parse_cost_file(text, str(path))
    if offers:
        config = replace(config, offers=offers, prices_source=str(path))
    return replace(config, **own, overrides=own)

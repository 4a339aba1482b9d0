"""From the job store's ledger to numbers: volumes, measured rates, volume per API key.

:func:`summarize` is pure (records in, :class:`LedgerSummary` out) so it is unit-tested
without a database; :func:`read_ledger` is the one function that touches the store.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone

from pixelmill.core.types import JobRecord
from pixelmill.jobs.store import JobStore

TRAILING_DAYS = 30
"""The trailing window whose image count is taken as the monthly volume ``N``."""
_SINCE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([hdw])\s*$", re.IGNORECASE)
_UNIT_HOURS = {"h": 1, "d": 24, "w": 24 * 7}


def parse_since(text: str, now: datetime) -> datetime:
    """``30d``, ``12h``, ``2w`` before ``now``, or an ISO date/datetime (UTC if no zone)."""
    match = _SINCE.match(text)
    if match:
        return now - timedelta(hours=float(match.group(1)) * _UNIT_HOURS[match.group(2).lower()])
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"--since takes 30d, 12h, 2w or an ISO date, got {text!r}") from None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class RateKey:
    """What a measured rate is measured for: model, image size and steps."""

    model: str
    width: int
    height: int
    steps: int


@dataclass
class Usage:
    """Images made and accelerator seconds spent on them."""

    jobs: int = 0
    images: int = 0
    gpu_seconds: float = 0.0

    def add(self, record: JobRecord) -> None:
        """Count one succeeded job."""
        self.jobs += 1
        self.images += record.images
        self.gpu_seconds += record.gpu_seconds or 0.0

    @property
    def rate(self) -> float | None:
        """Images per GPU-hour, ``images / (gpu_seconds / 3600)``; None without GPU time."""
        return self.images * 3600.0 / self.gpu_seconds if self.gpu_seconds > 0 else None


@dataclass
class LedgerSummary:
    """Everything the report needs from the ledger of one period."""

    since: datetime
    until: datetime
    total: Usage = field(default_factory=Usage)
    trailing: Usage = field(default_factory=Usage)
    images_per_day: dict[date, int] = field(default_factory=dict)
    by_rate_key: dict[RateKey, Usage] = field(default_factory=dict)
    by_steps: dict[int, Usage] = field(default_factory=dict)
    by_model_steps: dict[tuple[str, int], Usage] = field(default_factory=dict)
    by_size: dict[tuple[int, int], int] = field(default_factory=dict)
    by_api_key: dict[str | None, Usage] = field(default_factory=dict)
    by_key_and_size: dict[tuple[str | None, int, int], int] = field(default_factory=dict)

    @property
    def days(self) -> float:
        """Length of the period in days."""
        return max((self.until - self.since).total_seconds() / 86400.0, 0.0)

    @property
    def trailing_volume(self) -> int:
        """Images finished in the last :data:`TRAILING_DAYS` days: the monthly volume ``N``."""
        return self.trailing.images

    def step_rates(self, model: str | None = None) -> tuple[dict[int, float], dict[int, float]]:
        """Measured rate per step count, and the images behind each (the fit's weights).

        ``model``: that model's jobs only (a 4-step FLUX-schnell and a 30-step SDXL are two
        models, not two points of one line); None: every model's together."""
        usage = self.by_steps if model is None else {s: u for (m, s), u in self.by_model_steps.items() if m == model}
        rates = {s: u.rate for s, u in usage.items() if u.rate}
        return rates, {s: float(usage[s].images) for s in rates}  # type: ignore[misc]

    def models(self) -> list[str]:
        """Models with jobs in the period, most images first (ties by name)."""
        images: dict[str, int] = defaultdict(int)
        for (model, _), usage in self.by_model_steps.items():
            images[model] += usage.images
        return sorted(images, key=lambda m: (-images[m], m))


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def summarize(records: Iterable[JobRecord], *, since: datetime, now: datetime) -> LedgerSummary:
    """Add up succeeded local jobs finished in ``[since, now]``; the trailing window ends at ``now``.

    Jobs the gateway sent upstream are left out (they have no GPU time here and would
    skew the measured rate); :func:`pixelmill.cost.gateway.gateway_costs` accounts for them.

    Records before ``since`` still count towards the trailing volume when they are inside
    it, so ``--since 7d`` does not shrink ``N``.
    """
    summary = LedgerSummary(since=_utc(since), until=_utc(now))
    trailing_start = summary.until - timedelta(days=TRAILING_DAYS)
    groups: dict[str, dict] = {name: defaultdict(Usage) for name in ("rate", "steps", "model_steps", "key")}
    per_day: dict[date, int] = defaultdict(int)
    per_size: dict[tuple[int, int], int] = defaultdict(int)
    per_key_size: dict[tuple[str | None, int, int], int] = defaultdict(int)
    for record in records:
        if record.route != "local":
            continue  # upstream (gateway) jobs used no GPU here: see pixelmill.cost.gateway
        finished = _utc(record.finished_at or record.created_at)
        if finished > summary.until:
            continue
        if finished >= trailing_start:
            summary.trailing.add(record)
        if finished < summary.since:
            continue
        width, height = record.width or 0, record.height or 0
        summary.total.add(record)
        per_day[finished.date()] += record.images
        per_size[(width, height)] += record.images
        per_key_size[(record.api_key_id, width, height)] += record.images
        groups["rate"][RateKey(record.model or "?", width, height, record.steps)].add(record)
        groups["steps"][record.steps].add(record)
        groups["model_steps"][(record.model or "?", record.steps)].add(record)
        groups["key"][record.api_key_id].add(record)
    summary.images_per_day = dict(sorted(per_day.items()))
    summary.by_size, summary.by_key_and_size = dict(per_size), dict(per_key_size)
    summary.by_rate_key, summary.by_steps = dict(groups["rate"]), dict(groups["steps"])
    summary.by_model_steps = dict(groups["model_steps"])
    summary.by_api_key = dict(groups["key"])
    return summary


def read_ledger(store: JobStore, *, since: datetime, now: datetime) -> LedgerSummary:
    """Summarize the store's succeeded jobs since ``since`` (and the trailing window)."""
    start = min(_utc(since), _utc(now) - timedelta(days=TRAILING_DAYS))
    return summarize(store.ledger(start), since=since, now=now)

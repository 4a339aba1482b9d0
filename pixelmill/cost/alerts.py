"""Tell people when the trailing volume crosses the crossover ``N*``, in either direction.

The API process checks on a timer (``cost_check_interval_s``). A crossing gives a log
line, bumps the counter shown in ``GET /v1/cost/summary`` (``alerts``), and, when
``cost_alert_webhook`` is set, a POST signed exactly like job webhooks (see
:mod:`pixelmill.outbound.webhooks`) with ``X-Pixelmill-Event: cost.crossover``.

The first check after start only records where the volume stands: without a stored
previous state there is nothing to have crossed.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Literal


from pixelmill.cost.report import CostReport, store_report
from pixelmill.jobs.store import JobStore
from pixelmill.outbound.webhooks import WebhookSender, secret_from

log = logging.getLogger("pixelmill.cost")
EVENT = "cost.crossover"
State = Literal["above", "below", "never", "unknown"]


def crossing_state(volume: float, crossover: float | None, *, known: bool = True) -> State:
    """``above`` (self-hosting is cheaper), ``below``, ``never`` (it never wins) or ``unknown`` (no rate)."""
    if not known:
        return "unknown"
    if crossover is None:
        return "never"
    return "above" if volume > crossover else "below"


@dataclass
class CrossoverWatch:
    """Where the volume stood at the last check, and how often it crossed ``N*``."""

    state: State | None = None
    crossings_total: int = 0
    checks_total: int = 0
    last_check: dict | None = None
    last_crossing: dict | None = None
    webhook_deliveries: list[dict] = field(default_factory=list)
    model_flags: dict[str, str] = field(default_factory=dict)
    """The gateway's per-model flags ("move this model home", …) at the last check."""

    def observe_models(self, flags: dict[str, str | None]) -> dict[str, str]:
        """Record the gateway's per-model flags; returns those new since the last check."""
        current = {model: flag for model, flag in flags.items() if flag}
        new = {model: flag for model, flag in current.items() if self.model_flags.get(model) != flag}
        self.model_flags = current
        return new

    def observe(self, volume: float, crossover: float | None, *, known: bool = True,
                now: datetime | None = None) -> dict | None:
        """Record one check; returns the crossing event when the volume crossed ``N*``."""
        state = crossing_state(volume, crossover, known=known)
        previous, self.state = self.state, state
        self.checks_total += 1
        at = (now or datetime.now(timezone.utc)).isoformat()
        self.last_check = {"at": at, "volume": volume, "crossover": crossover, "state": state}
        # Only above <-> below is a crossing; a change of prices (to or from "never") is not traffic.
        if {previous, state} != {"above", "below"}:
            return None
        self.crossings_total += 1
        self.last_crossing = {"at": at, "volume": volume, "crossover": crossover, "direction": state}
        return self.last_crossing

    def public(self) -> dict:
        """The metric as ``GET /v1/cost/summary`` shows it."""
        return {
            "state": self.state, "crossings_total": self.crossings_total, "checks_total": self.checks_total,
            "last_check": self.last_check, "last_crossing": self.last_crossing,
            "webhook_deliveries": self.webhook_deliveries[-5:], "model_flags": self.model_flags,
        }


# One watch per job store: Services belongs to the composition root, so the watch lives here.
_watches: weakref.WeakKeyDictionary[JobStore, CrossoverWatch] = weakref.WeakKeyDictionary()


def watch_for(store: JobStore) -> CrossoverWatch:
    """The watch of this process for ``store`` (created on first use)."""
    return _watches.setdefault(store, CrossoverWatch())


def crossing_message(event: dict, report: CostReport) -> str:
    """The sentence logged and sent for a crossing."""
    direction = "above" if event["direction"] == "above" else "below"
    verdict = (report.verdict or {}).get("message", "")
    return (f"trailing 30-day volume {event['volume']:,.0f} crossed {direction} the crossover "
            f"{event['crossover']:,.0f} (vs {report.reference}): {verdict}")


def alert_body(event: dict, report: CostReport) -> dict:
    """The webhook body of a crossing."""
    return {"event": EVENT, **event, "reference": report.reference, "reference_price": report.reference_price,
            "message": crossing_message(event, report), "verdict": report.verdict}


def alert_sender(secret: bytes, *, allow_private: bool, attempts: int = 3) -> WebhookSender:
    """The job webhooks' sender, for crossover alerts: the same signature, URL guard and retries."""
    return WebhookSender(secret, allow_private, max_attempts=attempts, events=(EVENT,), param="cost_alert_webhook")


async def check_once(services) -> dict | None:
    """One check: read the ledger, update the watch, alert on a crossing. Returns the crossing."""
    report = await asyncio.to_thread(store_report, services.store, services.settings)
    watch = watch_for(services.store)
    if report.gateway is not None:  # per model: a hosted model that crossed N*, a local one below it
        for model, flag in watch.observe_models({row.model: row.flag for row in report.gateway.models}).items():
            log.warning("cost: model %s: %s", model, flag)
    crossover = report.verdict["crossover"] if report.verdict else None
    event = watch.observe(report.trailing_volume, crossover, known=report.rate is not None)
    if event is None:
        return None
    log.warning("cost: %s", crossing_message(event, report))
    settings = services.settings
    if settings.cost_alert_webhook:
        secret = secret_from(settings.webhook_secret, settings.data_dir / "webhook-secret")
        sender = alert_sender(secret, allow_private=settings.webhook_allow_private)
        result = await sender.deliver(settings.cost_alert_webhook, EVENT, alert_body(event, report))
        outcome = {"url": settings.cost_alert_webhook, **result.to_dict()}
        watch.webhook_deliveries.append(outcome)
        if not outcome["ok"]:
            log.warning("cost: crossover webhook to %s failed: %s", outcome["url"], outcome)
    return event


async def watch_crossover(services) -> None:
    """Check every ``cost_check_interval_s`` seconds (the API process runs this as a task)."""
    interval = services.settings.cost_check_interval_s
    if interval <= 0:
        return
    while True:
        try:
            await check_once(services)
        except Exception:  # a broken cost file must not take the server down; say so and go on
            log.exception("cost: crossover check failed")
        await asyncio.sleep(interval)

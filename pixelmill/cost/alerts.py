"""Tell people when the trailing volume crosses the crossover ``N*``, in either direction.

The API process checks on a timer (``cost_check_interval_s``). A crossing gives a log
line, bumps the counter shown in ``GET /v1/cost/summary`` (``alerts``), and, when
``cost_alert_webhook`` is set, a POST signed exactly like job webhooks (see
:mod:`pixelmill.outbound.webhooks`) with ``X-Pixelmill-Event: cost.crossover``.

With a gateway (``--backends``), a model whose flag appears or changes ("move this model
home", "below N*", see :mod:`pixelmill.cost.gateway`) is logged and sent the same way,
all of one check's new flags in one POST with ``X-Pixelmill-Event: cost.model_flag``.

The first check after start only records where the volume stands and which models are
flagged: without a stored previous state there is nothing to have crossed, and a restart
does not announce the same flags again.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Literal


from pixelmill.cost.gateway import ModelRow
from pixelmill.cost.report import CostReport, store_report
from pixelmill.jobs.store import JobStore
from pixelmill.outbound.webhooks import WebhookSender, secret_from

log = logging.getLogger("pixelmill.cost")
EVENT = "cost.crossover"
MODEL_EVENT = "cost.model_flag"
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
    models_observed: bool = False
    """Whether a check recorded the flags yet (the first one is the baseline: nothing is sent)."""

    def observe_models(self, flags: dict[str, str | None]) -> dict[str, str]:
        """Record the gateway's per-model flags; returns those new since the last check."""
        current = {model: flag for model, flag in flags.items() if flag}
        new = {model: flag for model, flag in current.items() if self.model_flags.get(model) != flag}
        self.model_flags = current
        self.models_observed = True
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


def model_flag_message(row: ModelRow) -> str:
    """The sentence logged and sent for one model's new flag."""
    where = f"served by {row.backend} ({row.policy})" if row.backend else f"served {row.policy}"
    n_star = "never" if row.n_star is None else f"{row.n_star:,.1f}"
    return (f"model {row.model}: {row.flag} (trailing 30-day volume {row.trailing_volume:,} images, "
            f"N* {n_star}; {where})")


def model_flags_body(new: dict[str, str], report: CostReport) -> dict:
    """The webhook body of one check's new model flags: each model's row and its sentence."""
    rows = {row.model: row for row in report.gateway.models} if report.gateway else {}
    flags = [{**rows[model].model_dump(mode="json"), "message": model_flag_message(rows[model])}
             for model in sorted(new) if model in rows]
    return {"event": MODEL_EVENT, "flags": flags, "message": "; ".join(flag["message"] for flag in flags)}


def alert_sender(secret: bytes, *, allow_private: bool, attempts: int = 3) -> WebhookSender:
    """The job webhooks' sender, for cost alerts: the same signature, URL guard and retries."""
    return WebhookSender(secret, allow_private, max_attempts=attempts, events=(EVENT, MODEL_EVENT),
                         param="cost_alert_webhook")


async def _send(services, watch: CrossoverWatch, event: str, body: dict) -> None:
    """POST one alert to ``cost_alert_webhook`` (when set) and remember how it went."""
    settings = services.settings
    if not settings.cost_alert_webhook:
        return
    secret = secret_from(settings.webhook_secret, settings.data_dir / "webhook-secret")
    sender = alert_sender(secret, allow_private=settings.webhook_allow_private)
    result = await sender.deliver(settings.cost_alert_webhook, event, body)
    outcome = {"url": settings.cost_alert_webhook, **result.to_dict()}
    watch.webhook_deliveries.append(outcome)
    if not outcome["ok"]:
        log.warning("cost: %s webhook to %s failed: %s", event, outcome["url"], outcome)


async def check_once(services) -> dict | None:
    """One check: read the ledger, update the watch, alert on a crossing and on new model
    flags. Returns the crossing."""
    report = await asyncio.to_thread(store_report, services.store, services.settings)
    watch = watch_for(services.store)
    if report.gateway is not None:  # per model: a hosted model that crossed N*, a local one below it
        baseline = not watch.models_observed
        new = watch.observe_models({row.model: row.flag for row in report.gateway.models})
        body = model_flags_body(new, report)
        for flag in body["flags"]:
            log.warning("cost: %s", flag["message"])
        if body["flags"] and not baseline:
            await _send(services, watch, MODEL_EVENT, body)
    crossover = report.verdict["crossover"] if report.verdict else None
    event = watch.observe(report.trailing_volume, crossover, known=report.rate is not None)
    if event is None:
        return None
    log.warning("cost: %s", crossing_message(event, report))
    await _send(services, watch, EVENT, alert_body(event, report))
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

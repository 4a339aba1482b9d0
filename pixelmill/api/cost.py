"""Cost routes: ``GET /v1/cost/summary`` (the report as JSON) and ``GET /dashboard``.

The dashboard is static HTML, CSS and a small script shipped in ``api/static``: no CDN,
no build step. It reads ``/v1/cost/summary`` and redraws the curves in the browser. Its
sliders ask the same endpoint again with what-if parameters (``price``, ``gpu_hour``, …):
the verdict and ``N*`` the page shows are always computed here, by the code behind
``pixelmill cost report``, never by a second implementation in the script.
"""

from __future__ import annotations

import asyncio
import math
from datetime import datetime, timezone
from importlib import resources
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import HTMLResponse, Response

from pixelmill.api.auth import require_admin
from pixelmill.api.deps import ServicesDep
from pixelmill.cost.alerts import watch_for
from pixelmill.cost.ledger import parse_since
from pixelmill.cost.prices import CostConfigError
from pixelmill.cost.report import store_report
from pixelmill.cost.scenario import what_if
from pixelmill.core.errors import InvalidRequest

router = APIRouter(tags=["Cost"])
_STATIC = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
_NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


def _static(name: str) -> str:
    return resources.files("pixelmill.api").joinpath("static", name).read_text(encoding="utf-8")


@router.get("/v1/cost/summary", dependencies=[Depends(require_admin)])  # every key's usage: admin only
async def cost_summary(
    services: ServicesDep,
    since: Annotated[str | None, Query(description="30d, 12h, 2w or an ISO date; default 30d")] = None,
    price: Annotated[float | None, Query(ge=0, description="What-if: hosted price per image, c ($)")] = None,
    gpu_hour: Annotated[float | None, Query(ge=0, description="What-if: GPU price per hour, G ($)")] = None,
    rate: Annotated[float | None, Query(gt=0, description="What-if: images per GPU-hour, r (reference steps)")] = None,
    overhead: Annotated[float | None, Query(ge=0, description="What-if: fixed monthly overhead, E ($)")] = None,
    steps: Annotated[int | None, Query(ge=1, le=10_000, description="What-if: denoising steps")] = None,
    volume: Annotated[float | None, Query(ge=0, description="What-if: images per month, N")] = None,
) -> dict:
    """The cost report of this server's ledger (as ``pixelmill cost report --json``) plus alert state.

    ``scenario`` is the verdict for the what-if parameters given, the report's own values
    standing in for the others (without any, it repeats the report's verdict); null while
    no rate is measured or given.
    """
    assumptions = {"price": price, "gpu_hour": gpu_hour, "rate": rate, "overhead": overhead, "volume": volume}
    for name, value in assumptions.items():
        if value is not None and not math.isfinite(value):  # FastAPI parses "inf" and "nan" as floats
            raise InvalidRequest(f"{name} must be a finite number", param=name)
    try:
        start = parse_since(since, datetime.now(timezone.utc)) if since else None
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="since") from None
    try:
        report = await asyncio.to_thread(store_report, services.store, services.settings, since=start)
    except CostConfigError as exc:
        raise InvalidRequest(f"cost configuration: {exc}", param="cost_config") from None
    try:
        scenario = what_if(report, steps=steps, **assumptions)
    except ValueError as exc:
        raise InvalidRequest(f"what-if: {exc}") from None
    return report.model_dump(mode="json") | {
        "scenario": scenario.model_dump(mode="json") if scenario else None,
        "alerts": watch_for(services.store).public(),
    }


@router.get("/dashboard", response_class=HTMLResponse)
async def dashboard() -> HTMLResponse:
    """The build-versus-buy dashboard: interactive cost curves for this server's traffic."""
    return HTMLResponse(_static("dashboard.html"), headers=_NO_STORE)


@router.get("/dashboard/{name}", include_in_schema=False)
async def dashboard_asset(name: str) -> Response:
    """The dashboard's script and stylesheet (a fixed list: nothing else is served from here)."""
    if name not in _STATIC:
        return Response(status_code=404)
    return Response(_static(name), media_type=_STATIC[name], headers=_NO_STORE)

"""``GET /metrics``: the Prometheus text format, from this app's own registry.

What is measured is defined in :mod:`pixelmill.observe.metrics`; this module wires it to
one app: the jobs' metrics of its services, the HTTP metrics its middleware records
(:func:`route_labels`), the engine caches of the process and the job store read at
each scrape (:func:`pixelmill.jobs.stats.queue_snapshot`). Protected like the admin
routes (an admin key, or open mode on loopback) unless ``--metrics-public`` opens it for
a Prometheus server that sends no key.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import Scope

from pixelmill.api.auth import bearer, current_principal, require_admin
from pixelmill.jobs.stats import queue_snapshot
from pixelmill.observe.metrics import CacheCollector, HttpMetrics, QueueCollector, build_registry
from pixelmill.services import Services

router = APIRouter(tags=["System"])


async def metrics_access(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> None:
    """An admin key (the admin routes' rule), unless ``metrics_public`` is on."""
    if request.app.state.services.settings.metrics_public:
        return
    await require_admin(request, await current_principal(request, credentials))


@router.get(
    "/metrics", dependencies=[Depends(metrics_access)],
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format."}},
)
async def metrics(request: Request) -> Response:
    """Metrics in the Prometheus text format (queue, jobs, batches, images, GPU seconds,
    engine caches, webhooks, HTTP requests); needs an admin key unless ``--metrics-public``."""
    # Collecting queries the job store: off the event loop.
    body = await asyncio.to_thread(generate_latest, request.app.state.metrics_registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


def install(app: FastAPI, services: Services) -> None:
    """Give ``app`` its own registry (never the global one) and the ``/metrics`` route."""
    http = HttpMetrics()
    app.state.http_metrics = http
    app.state.metrics_registry = build_registry(
        *services.events.metrics.collectors(), *http.collectors(), CacheCollector(),
        QueueCollector(lambda: queue_snapshot(services.store)),
    )
    app.include_router(router)


def route_labels(scope: Scope) -> tuple[str, str]:
    """``(dialect, route template)`` of a request after routing: the template, never the raw
    path (ids in paths would make a series per job). The dialect is the ``pixelmill.api``
    package of the route's endpoint (``openai``, ``native``, …), ``pixelmill`` for the
    server's own routes (health, keys, cost, docs), ``none`` when no route matched."""
    route = scope.get("route")
    template = getattr(route, "path", None)
    if template is None:
        return "none", HttpMetrics.UNMATCHED
    parts = getattr(getattr(route, "endpoint", None), "__module__", "").split(".")
    dialect = parts[2] if len(parts) > 3 and parts[:2] == ["pixelmill", "api"] else "pixelmill"
    return dialect, template

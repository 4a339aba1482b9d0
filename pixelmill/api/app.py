"""``create_app(settings, services)``: the FastAPI application, built on demand.

The services come ready-made (:func:`pixelmill.server.build_app` builds them with the
engine; tests may use fake backends): the API never imports the engine, even indirectly.
On start the embedded workers' backends load in the background, so ``/health`` answers
(503, ``"status": "loading"``) while the model loads, and 200 once it can generate.
On shutdown (SIGTERM) workers stop claiming, finish or release their running job, and
pending webhooks get a moment to go out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from pixelmill import __version__
from pixelmill.api import keys as api_keys
from pixelmill.api import openapi as api_openapi
from pixelmill.api import cost, system, ui
from pixelmill.api import docs as api_docs
from pixelmill.api import metrics as api_metrics
from pixelmill.api import models as api_models
from pixelmill.api.a1111 import listing as a1111_listing
from pixelmill.api.a1111 import router as a1111
from pixelmill.api.auth import Authenticator
from pixelmill.api.errors import A1111_SHAPE, COG_SHAPE, REPLICATE_SHAPE, install_error_handlers
from pixelmill.api.middleware import RequestContextMiddleware
from pixelmill.api.native import jobs as native_jobs
from pixelmill.api.native import router as native
from pixelmill.api.openai import router as openai
from pixelmill.api.replicate import catalog as replicate_catalog
from pixelmill.api.replicate import cog
from pixelmill.api.replicate import router as replicate
from pixelmill.cost.alerts import watch_crossover
from pixelmill.auth.store import KeyStore
from pixelmill.jobs.reaping import reap_expired_jobs
from pixelmill.services import Services
from pixelmill.settings import Settings

log = logging.getLogger("pixelmill.api")
SWEEP_INTERVAL_S = 60
SHUTDOWN_GRACE_S = 20.0
"""How long a running job may take to finish at shutdown before it is released."""


async def _maintenance(services: Services) -> None:
    """Put jobs of dead workers back in the queue; delete expired results."""
    last_sweep = 0.0
    interval = max(0.5, services.settings.lease_s / 4)
    while True:
        await asyncio.sleep(interval)
        try:
            await reap_expired_jobs(services.store, services.notifier, services.events)
            if canceled := await services.jobs.cancel_overdue():
                log.info("canceled %d job(s) past their cancel deadline", canceled)
            if asyncio.get_running_loop().time() - last_sweep > SWEEP_INTERVAL_S:
                last_sweep = asyncio.get_running_loop().time()
                removed = await asyncio.to_thread(services.results.sweep)
                if removed:
                    log.info("removed %d expired result files", removed)
        except Exception:  # the store or the results folder is broken: try again next round, never die
            log.exception("maintenance failed; retrying in %.1f s", interval)


@contextlib.asynccontextmanager
async def _running(services: Services) -> AsyncIterator[None]:
    """Backends, workers and maintenance for the app's lifetime."""
    for backend in services.backends:
        backend.start()
    runners = [*services.workers, *services.upstream_workers]  # upstream: the gateway's (pixelmill.gateway)
    tasks = [asyncio.create_task(worker.run()) for worker in runners]
    maintenance = asyncio.create_task(_maintenance(services))
    cost_watch = asyncio.create_task(watch_crossover(services))
    try:
        yield
    finally:
        maintenance.cancel()
        cost_watch.cancel()
        await asyncio.gather(*(w.shutdown(t, SHUTDOWN_GRACE_S) for w, t in zip(runners, tasks)))
        services.jobs.close()
        await services.events.drain(timeout=5)
        for backend in services.backends:
            backend.shutdown()


def create_app(settings: Settings, services: Services) -> FastAPI:
    """Build the app for ``settings`` around ``services`` (see :mod:`pixelmill.services`)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with _running(services):
            yield

    app = FastAPI(
        title="pixelmill",
        version=__version__,
        summary="Self-hosted image generation with OpenAI-compatible APIs and a cost ledger.",
        lifespan=lifespan,
        # FastAPI's own /docs and /redoc load their scripts from CDNs (blank offline): api.docs
        # serves the same pages with local copies of the assets.
        docs_url=None,
        redoc_url=None,
    )
    app.state.services = services
    app.state.auth = Authenticator(settings, KeyStore(services.store.engine))
    # Error shapes of dialects whose clients expect their own error body (first match wins).
    install_error_handlers(app, shapes=(A1111_SHAPE, REPLICATE_SHAPE, COG_SHAPE))
    app.add_middleware(RequestContextMiddleware, settings=settings)
    _add_cors(app, settings)
    app.include_router(system.router)
    app.include_router(openai.router)
    app.include_router(native.router)
    app.include_router(native_jobs.router)
    app.include_router(a1111.router)  # at the root: A1111 clients overwrite the URL path
    app.include_router(a1111_listing.router)
    app.include_router(replicate.router)  # under /replicate: its /v1/files and /v1/models collide at the root
    app.include_router(replicate_catalog.router)
    app.include_router(cog.router)  # Cog's own API, under /cog: its /openapi.json and / collide at the root
    app.include_router(cost.router)
    app.include_router(ui.router)  # /ui, /ui/gallery: static pages over the API
    app.include_router(api_keys.router)
    app.include_router(api_models.router)
    app.include_router(api_docs.router)
    api_metrics.install(app, services)  # /metrics, with this app's own registry
    api_openapi.install(app)  # each route's errors documented in its dialect's shape
    return app


def _add_cors(app: FastAPI, settings: Settings) -> None:
    """CORS for the configured origins only; off (no CORS headers at all) by default."""
    if not settings.cors_origins:
        return
    # Added last, so it is outermost: preflights are answered before auth or body limits.
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_methods=["GET", "POST", "DELETE"],
        allow_headers=["Authorization", "Content-Type", "Idempotency-Key"],
        expose_headers=["X-Request-Id", "Retry-After", "Location"],
        # Bearer keys travel in a header, never in cookies: credentials mode stays off.
        allow_credentials=False,
    )

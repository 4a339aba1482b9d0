"""``create_app(settings, services)``: the FastAPI application, built on demand.

The engine starts in the background when the app starts, so ``/health`` answers (503,
``"status": "loading"``) while the model loads, and 200 once it can generate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI

from pixelmill import __version__
from pixelmill.api import system
from pixelmill.api.errors import install_error_handlers
from pixelmill.api.middleware import RequestContextMiddleware
from pixelmill.api.native import router as native
from pixelmill.api.openai import router as openai
from pixelmill.services import Services, build_services
from pixelmill.settings import Settings

log = logging.getLogger("pixelmill.api")
SWEEP_INTERVAL_S = 60


async def _sweep_results(services: Services) -> None:
    """Delete expired result files every minute."""
    while True:
        await asyncio.sleep(SWEEP_INTERVAL_S)
        removed = await asyncio.to_thread(services.results.sweep)
        if removed:
            log.info("removed %d expired result files", removed)


def create_app(settings: Settings, services: Services | None = None) -> FastAPI:
    """Build the app for ``settings``; ``services`` may be injected (tests, embedding)."""
    services = services or build_services(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services.runner.start()
        sweeper = asyncio.create_task(_sweep_results(services))
        try:
            yield
        finally:
            sweeper.cancel()
            services.runner.shutdown()

    app = FastAPI(
        title="pixelmill",
        version=__version__,
        summary="Self-hosted image generation with OpenAI-compatible APIs and a cost ledger.",
        lifespan=lifespan,
    )
    app.state.services = services
    install_error_handlers(app)
    app.add_middleware(
        RequestContextMiddleware,
        max_json_bytes=settings.max_json_bytes,
        max_multipart_bytes=settings.max_multipart_bytes,
    )
    app.include_router(system.router)
    app.include_router(openai.router)
    app.include_router(native.router)
    return app

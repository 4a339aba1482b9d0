"""The composition root of a server or worker process: the engine backend and the app.

The only module that puts the diffusers engine behind the jobs layer and the API. The
CLI and tests import it; the API does not (``api`` must not reach the engine, torch or
diffusers, not even through an import of an import), which is why
:func:`pixelmill.api.app.create_app` takes ready-made services.
"""

from __future__ import annotations

from fastapi import FastAPI

from pixelmill.api.app import create_app
from pixelmill.core.backend import GenerationBackend
from pixelmill.engine.runner import EngineRunner
from pixelmill.registry.models_dir import ModelRegistry
from pixelmill.services import BackendFactory, Services
from pixelmill.services import build_services as wire_services
from pixelmill.settings import Settings


def engine_backend(settings: Settings, registry: ModelRegistry) -> GenerationBackend:
    """One diffusers engine on its own thread (torch and the model load at ``start``)."""
    return EngineRunner(settings, registry)


def build_services(
    settings: Settings, *, workers: int | None = None, backend: BackendFactory = engine_backend,
) -> Services:
    """Services whose workers run ``backend`` (the diffusers engine unless told otherwise)."""
    return wire_services(settings, workers=workers, backend_factory=backend)


def build_app(settings: Settings, *, backend: BackendFactory = engine_backend) -> FastAPI:
    """The FastAPI app for ``settings`` with its embedded workers on ``backend``."""
    return create_app(settings, build_services(settings, backend=backend))

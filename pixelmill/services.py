"""The composition root: builds the long-lived objects a server (or CLI) needs.

Nothing here runs at import time; ``build_services`` is called by ``create_app`` or
the CLI with a :class:`Settings` object.
"""

from __future__ import annotations

from dataclasses import dataclass

from pixelmill.engine.runner import EngineRunner
from pixelmill.jobs.results import ResultStore
from pixelmill.jobs.service import GenerationService
from pixelmill.registry import ModelRegistry
from pixelmill.settings import Settings


@dataclass
class Services:
    """Everything the API routes use, created once per process."""

    settings: Settings
    registry: ModelRegistry
    runner: EngineRunner
    generation: GenerationService
    results: ResultStore


def build_services(settings: Settings) -> Services:
    """Wire the layers together for ``settings`` (the engine starts later, in the app's lifespan)."""
    registry = ModelRegistry(settings.models_dir)
    runner = EngineRunner(settings, registry)
    return Services(
        settings=settings,
        registry=registry,
        runner=runner,
        generation=GenerationService(settings, runner),
        results=ResultStore(settings.results_dir, settings.result_retention_s),
    )

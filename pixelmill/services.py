"""The composition root: builds the long-lived objects a server or worker process needs.

Nothing here runs at import time; :func:`build_services` is called by ``create_app`` or
the ``worker`` command with a :class:`Settings` object. Opening the job store upgrades
its schema (safe when several processes start at once).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from pixelmill.engine.runner import EngineRunner
from pixelmill.jobs.blobs import DatabaseResultStore
from pixelmill.jobs.events import JobEvents
from pixelmill.jobs.notify import Notifier
from pixelmill.jobs.results import ResultStore
from pixelmill.jobs.service import JobService, ModelCatalog
from pixelmill.jobs.store import JobStore
from pixelmill.outbound.webhooks import WebhookSender, secret_from
from pixelmill.jobs.worker import Worker, default_worker_id
from pixelmill.registry.models_dir import ModelRegistry
from pixelmill.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Services:
    """Everything the routes and workers of one process use."""

    settings: Settings
    registry: ModelRegistry
    store: JobStore
    results: ResultStore | DatabaseResultStore
    notifier: Notifier
    events: JobEvents
    jobs: JobService
    runners: list[EngineRunner] = field(default_factory=list)
    workers: list[Worker] = field(default_factory=list)

    @property
    def runner(self) -> EngineRunner | None:
        """The first embedded engine (None on an API-only host)."""
        return self.runners[0] if self.runners else None

    async def read_result(self, file_id: str) -> bytes:
        """The bytes of a stored result image."""
        stored = await asyncio.to_thread(self.results.get, file_id)
        if stored.data is not None:
            return stored.data
        return await asyncio.to_thread(stored.path.read_bytes)


def build_services(settings: Settings, *, workers: int | None = None) -> Services:
    """Wire the layers for ``settings``; ``workers`` overrides ``settings.workers``."""
    registry = ModelRegistry(settings.models_dir)
    registry.refresh()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = JobStore.open(settings.db_url)
    if settings.results_in_database:
        results = DatabaseResultStore(store.engine, settings.result_retention_s)
    else:
        results = ResultStore(settings.results_dir, settings.result_retention_s)
    sender = WebhookSender(
        secret=secret_from(settings.webhook_secret, settings.data_dir / "webhook-secret"),
        allow_private=settings.webhook_allow_private,
    )
    notifier = Notifier()
    events = JobEvents(store, sender, base_url=settings.public_url or "")
    services = Services(
        settings=settings, registry=registry, store=store, results=results, notifier=notifier,
        events=events, jobs=JobService(settings, store, ModelCatalog(settings, registry), notifier),
    )
    count = settings.workers if workers is None else workers
    base_id = settings.worker_id or default_worker_id()
    for i in range(count):
        # One engine (thread and model copy) per worker: workers never share a pipeline.
        runner = EngineRunner(settings, registry)
        worker_id = base_id if count == 1 else f"{base_id}/{i}"
        services.runners.append(runner)
        services.workers.append(Worker(settings, store, runner, results, notifier, events, worker_id=worker_id))
    return services

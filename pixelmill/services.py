"""The composition root of the jobs side: store, notifier, job service and workers.

Nothing here runs at import time. :func:`build_services` wires the layers around
generation backends it is given (a factory), so this module, and the API that imports
it, never import the engine: :mod:`pixelmill.server` passes the engine's factory, tests
pass fakes. Opening the job store upgrades its schema (safe when several processes
start at once).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from pixelmill.core.backend import GenerationBackend
from pixelmill.gateway.config import GatewayConfig, GatewayConfigError, load_config
from pixelmill.gateway.dispatch import Dispatcher
from pixelmill.gateway.worker import UpstreamWorker
from pixelmill.jobs.availability import Availability
from pixelmill.jobs.blobs import DatabaseResultStore
from pixelmill.jobs.events import JobEvents
from pixelmill.jobs.notify import Notifier
from pixelmill.jobs.results import ResultStore
from pixelmill.jobs.service import JobService, ModelCatalog
from pixelmill.jobs.store import JobStore
from pixelmill.outbound.webhooks import WebhookSender, secret_from
from pixelmill.jobs.worker import Worker, default_worker_id
from pixelmill.registry.manifest import DEMO_MODELS_KIND, discard_incomplete
from pixelmill.registry.models_dir import ModelRegistry
from pixelmill.settings import Settings

log = logging.getLogger(__name__)

BackendFactory = Callable[[Settings, ModelRegistry], GenerationBackend]
"""Builds one backend (one engine, one model copy) for one worker."""


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
    availability: Availability
    backends: list[GenerationBackend] = field(default_factory=list)
    workers: list[Worker] = field(default_factory=list)
    upstream_workers: list[UpstreamWorker] = field(default_factory=list)
    """One per gateway backend (``--backends``); the app runs them beside the workers."""
    gateway: GatewayConfig | None = None

    @property
    def backend(self) -> GenerationBackend | None:
        """The first embedded backend (None on an API-only host)."""
        return self.backends[0] if self.backends else None

    async def read_result(self, file_id: str) -> bytes:
        """The bytes of a stored result image."""
        stored = await asyncio.to_thread(self.results.get, file_id)
        if stored.data is not None:
            return stored.data
        return await asyncio.to_thread(stored.path.read_bytes)


def model_registry(settings: Settings) -> ModelRegistry:
    """The models directory, plus the demo models a server without ``--model`` may fall back to.

    Without a configured model the engine serves the SDXL base or, when it cannot load,
    the demo models it writes into ``<data dir>/demo-models``: the registry lists that
    folder too, so its LoRA, ControlNet and refiner are usable by name like the model. A
    folder left incomplete by an interrupted first start is removed here, so the engine
    writes it again instead of reusing it.
    """
    if settings.model:
        return ModelRegistry(settings.models_dir)
    discard_incomplete(settings.demo_models_dir, kind=DEMO_MODELS_KIND)
    return ModelRegistry(settings.models_dir, generated_roots=((settings.demo_models_dir, DEMO_MODELS_KIND),))


def build_services(
    settings: Settings, *, workers: int | None = None, backend_factory: BackendFactory | None = None,
) -> Services:
    """Wire the layers for ``settings``; ``workers`` overrides ``settings.workers``.

    Each worker gets its own backend from ``backend_factory``, which is required when
    there are workers (an API-only host, ``workers=0``, needs none).
    """
    count = settings.workers if workers is None else workers
    if count and backend_factory is None:
        raise ValueError("build_services: workers need a backend_factory (see pixelmill.server)")
    registry = model_registry(settings)
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
    backends: list[GenerationBackend] = []
    worker_list: list[Worker] = []
    base_id = settings.worker_id or default_worker_id()
    for i in range(count):
        # One backend (engine thread and model copy) per worker: workers never share a pipeline.
        backend = backend_factory(settings, registry)
        worker_id = base_id if count == 1 else f"{base_id}/{i}"
        backends.append(backend)
        worker_list.append(Worker(settings, store, backend, results, notifier, events, worker_id=worker_id))
    availability = Availability(settings, store, list(worker_list))
    gateway = gateway_config(settings)
    router, upstream_workers = None, []
    if gateway is not None:
        router = Dispatcher(gateway, store, list(worker_list), silence_s=settings.lease_s)
        upstream_workers = [UpstreamWorker(settings, store, backend, results, notifier, events, worker_id=base_id)
                            for backend in gateway.backends.values()]
    catalog = ModelCatalog(settings, registry, router)
    jobs = JobService(settings, store, catalog, notifier, availability=availability, router=router)
    return Services(
        settings=settings, registry=registry, store=store, results=results, notifier=notifier, events=events,
        jobs=jobs, availability=availability, backends=backends, workers=worker_list,
        upstream_workers=upstream_workers, gateway=gateway,
    )


def gateway_config(settings: Settings) -> GatewayConfig | None:
    """The ``--backends`` file, checked against the settings; None without one.

    A model routed upstream must reach the router under its own name: a bare model alias
    (or an alias's name) is rewritten to the local model before routing, so it is refused
    here with the setting to change.
    """
    if settings.backends is None:
        return None
    config = load_config(settings.backends)
    aliases = settings.bare_model_aliases | {name for name, _ in settings.model_alias_pairs}
    for model in sorted(config.upstream_models() & aliases):
        raise GatewayConfigError(f"{config.source}: model {model!r} is also a --model-aliases name, which "
                                 "resolves to a local model before routing; remove it from --model-aliases")
    return config

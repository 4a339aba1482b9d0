"""The one entry point every dialect calls: validate, commit a job, optionally wait.

A synchronous call (OpenAI dialect) is a durable job plus a wait, so batching,
cancellation, crash recovery and the cost ledger apply to every image. A request that
fails any check raises before anything is stored.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Protocol

from pixelmill.core.types import (
    RANDOM_SEED, GenerationRequest, JobRecord, JobStatus, ResolvedRequest, WebhookSpec, resolve_seed,
)
from pixelmill.core.errors import (Conflict, GenerationCanceled, GenerationFailed, InvalidRequest, NotFound,
                                   PayloadTooLarge, WaitTimeout)
from pixelmill.jobs.availability import Availability
from pixelmill.jobs.notify import Notifier
from pixelmill.jobs.previews import LivePreview
from pixelmill.jobs.store import JobStore
from pixelmill.registry.models_dir import ModelKind, ModelRegistry
from pixelmill.settings import Settings
from pixelmill.core.policy import resolve


class RouteChoice(Protocol):
    """Where a job goes: ``route`` is ``"local"`` or an upstream backend's name."""

    @property
    def route(self) -> str: ...


class Router(Protocol):
    """The gateway's side of submitting (``pixelmill.gateway.dispatch.Dispatcher``); the jobs
    layer knows it by this protocol only."""

    def serves(self, model: str | None) -> bool:
        """Whether an upstream backend serves ``model``."""

    def decide(self, request: GenerationRequest) -> RouteChoice:
        """Where the resolved ``request`` goes (blocking: may read the store)."""

    def shadow(self, job_id: str, decision: RouteChoice) -> str | None:
        """The backend on which to shadow the local job ``job_id``, if sampled."""


class ModelCatalog:
    """Which model names a request may use, known without loading any model.

    An API host may run no worker at all, so this answers from the settings and the
    models directory: the default model (and its OpenAI aliases) or a checkpoint name.
    It is the request policy's :class:`~pixelmill.core.policy.Catalog`.
    """

    def __init__(self, settings: Settings, registry: ModelRegistry, router: Router | None = None):
        self.settings = settings
        self.registry = registry
        self.router = router  # the gateway: model names its upstream backends serve are known too

    @property
    def default_model(self) -> str | None:
        """The configured default model's name; None when none is configured (each
        worker then serves the SDXL base or, failing that, the demo model)."""
        return self.settings.model

    def check(self, request: GenerationRequest) -> None:
        """Raise ``NotFound``/``InvalidRequest`` naming the parameter for any model, LoRA,
        ControlNet or refiner a request names that no worker can serve.

        A name missing from the last scan triggers one re-scan first (a file may have
        been added since).
        """
        try:
            self._check(request)
        except NotFound:
            self.registry.refresh()
            self._check(request)

    def _check(self, request: GenerationRequest) -> None:
        name = request.model
        if name and self.router is not None and self.router.serves(name):
            return  # an upstream serves it (LoRAs and the like are the upstream's business)
        if name and name not in self.settings.bare_model_aliases and name not in self.settings.default_model_names:
            self.registry.base_model(name)  # a refiner is not a base model: 400 naming model
        for index, lora in enumerate(request.loras):
            self.registry.resolve(ModelKind.lora, lora.name, param=f"loras[{index}].name")
        for index, control in enumerate(request.controlnets):
            self.registry.resolve(ModelKind.controlnet, control.name, param=f"controlnets[{index}].name")
        if request.refiner is not None:
            self.registry.resolve(ModelKind.checkpoint, request.refiner.name, param="refiner.name")


class JobService:
    """Submit, inspect, cancel and wait for jobs; the seam between dialects and workers."""

    def __init__(
        self, settings: Settings, store: JobStore, catalog: ModelCatalog, notifier: Notifier,
        *, availability: Availability | None = None, router: Router | None = None,
    ):
        self.settings = settings
        self.store = store
        self.catalog = catalog
        self.notifier = notifier
        # None: accept every job (tests of the service alone); see jobs.availability.
        self.availability = availability
        self.router = router  # None: every job is local (no --backends)
        # Cancel deadlines due while this process runs: exact to the timer, where the durable
        # check (cancel_overdue, from the maintenance loop) is only as exact as its interval.
        self._deadlines: set[asyncio.Task] = set()  # strong references: a pending task must not be collected

    def prepare(self, request: GenerationRequest, *, idempotency_key: str | None = None) -> ResolvedRequest:
        """The request as it will be stored and run: resolved by the request policy
        (defaults filled, size settled, limits checked, model known), seed fixed.

        A random seed under an idempotency key is derived from the key, so a retried
        submission is the same request (same job) rather than a "different body".
        """
        request = resolve(request, self.settings.policy(), self.catalog)
        if request.seed == RANDOM_SEED and idempotency_key is not None:
            digest = hashlib.sha256(idempotency_key.encode()).digest()
            return request.model_copy(update={"seed": int.from_bytes(digest[:4], "big")})
        return request.model_copy(update={"seed": resolve_seed(request.seed)})

    async def submit(
        self,
        request: GenerationRequest,
        *,
        idempotency_key: str | None = None,
        webhook: WebhookSpec | None = None,
        priority: int = 0,
        api_key_id: str | None = None,
        max_active: int | None = None,
        cancel_after_s: float | None = None,
    ) -> tuple[JobRecord, bool]:
        """Commit a job for ``request``; returns (job, created). Committed before returning.

        ``cancel_after_s``: cancel the job if it is not finished that long after now; the
        deadline is stored with the job, so it holds across restarts.

        ``api_key_id`` is recorded on the job (the ledger's "who"); ``max_active`` caps that
        key's queued+running jobs (429 beyond it). Refused at once with
        :class:`~pixelmill.core.errors.ModelUnavailable` (503) while no worker of this
        server can run it (model failed to load, workers degraded).
        """
        prepared = self.prepare(request, idempotency_key=idempotency_key)
        decision = await asyncio.to_thread(self.router.decide, prepared) if self.router is not None else None
        route = decision.route if decision is not None else "local"
        if self.availability is not None and route == "local":  # after prepare: a bad request is a 400
            self.availability.check()
        job, created = await asyncio.to_thread(
            self.store.submit, prepared, idempotency_key=idempotency_key, webhook=webhook,
            priority=priority, max_attempts=self.settings.max_attempts, max_queued=self.settings.max_queued,
            api_key_id=api_key_id, max_active=max_active, route=route, cancel_after_s=cancel_after_s,
        )
        if created and cancel_after_s is not None:
            self._cancel_at_deadline(job.id, cancel_after_s)
        if created and decision is not None and (backend := self.router.shadow(job.id, decision)):
            # The sampled shadow run: same request upstream, no webhook, out of listings and limits.
            await asyncio.to_thread(self.store.submit, prepared, priority=priority, api_key_id=api_key_id,
                                    max_attempts=self.settings.max_attempts, route=backend, shadow_of=job.id)
        if created:
            self.notifier.work_available()
        return job, created

    async def submit_batch(
        self, requests: list[GenerationRequest], *, webhook: WebhookSpec | None = None, priority: int = 0,
        api_key_id: str | None = None, max_active: int | None = None,
    ) -> tuple[str, list[JobRecord]]:
        """Commit one job per request, all or nothing (``api_key_id``/``max_active`` as in submit)."""
        # Resolving a thousand requests takes ~0.2 s of CPU: not on the event loop.
        prepared = await asyncio.to_thread(lambda: [self.prepare(request) for request in requests])
        routes = ["local"] * len(prepared)
        if self.router is not None:  # a batch is routed per request, not shadowed
            routes = await asyncio.to_thread(lambda: [self.router.decide(r).route for r in prepared])
        if self.availability is not None and "local" in routes:
            self.availability.check()
        batch_id, jobs = await asyncio.to_thread(
            self.store.submit_batch, prepared, webhook=webhook, priority=priority,
            max_attempts=self.settings.max_attempts, max_queued=self.settings.max_queued,
            api_key_id=api_key_id, max_active=max_active, routes=routes,
        )
        self.notifier.work_available()
        return batch_id, jobs

    async def get(self, job_id: str) -> JobRecord:
        return await asyncio.to_thread(self.store.get, job_id)

    async def queue_position(self, job_id: str) -> int | None:
        return await asyncio.to_thread(self.store.queue_position, job_id)

    async def preview(self, job_id: str) -> LivePreview | None:
        """The latest live preview of a running job, with its step and media type (None
        when it is not running or has none yet); stored by whichever worker runs it."""
        return await asyncio.to_thread(self.store.latest_preview, job_id)

    async def latest_preview(self, job_id: str) -> bytes | None:
        """The latest live preview of a running job as image bytes (JPEG, or PNG from a
        backend that makes PNGs), or None; for dialects that show "the current image"."""
        preview = await self.preview(job_id)
        return preview.data if preview is not None else None

    def _cancel_at_deadline(self, job_id: str, seconds: float) -> None:
        async def due() -> None:
            await asyncio.sleep(seconds)
            await self._cancel_quietly(job_id)

        task = asyncio.create_task(due())
        self._deadlines.add(task)
        task.add_done_callback(self._deadlines.discard)

    async def _cancel_quietly(self, job_id: str) -> None:
        try:
            await self.cancel(job_id)
        except (Conflict, NotFound):
            pass  # finished (or gone) in time

    async def cancel_overdue(self) -> int:
        """Cancel every unfinished job past its stored deadline (those whose timer died with
        the process that accepted them); returns how many. Run by each API host's maintenance."""
        overdue = await asyncio.to_thread(self.store.overdue)
        for job_id in overdue:
            await self._cancel_quietly(job_id)
        return len(overdue)

    def close(self) -> None:
        """Drop this process's deadline timers (the stored deadlines remain for the next start)."""
        for task in self._deadlines:
            task.cancel()

    async def cancel(self, job_id: str) -> JobRecord:
        """Cancel a queued job now, or ask the worker to stop a running one.

        Cancelling a canceled job returns it as it is (idempotent: a retried cancel is
        not an error). A job that already succeeded or failed cannot be canceled:
        :class:`Conflict` (409) naming ``job_id`` and the job's state.
        """
        job = await asyncio.to_thread(self.store.cancel, job_id)
        if job.status in (JobStatus.succeeded, JobStatus.failed):
            raise Conflict(f"job {job_id} has already {job.status.value}; only a queued or running job "
                           "can be canceled", param="job_id")
        self.notifier.job_changed(job_id)
        return job

    async def watch(self, job_id: str, *, progress: bool = True) -> AsyncIterator[JobRecord]:
        """Yield the job whenever it may have changed, until it is terminal.

        ``progress=False``: only when its status may have changed (a waiter for the end).
        """
        with self.notifier.listen(job_id, progress=progress) as news:
            while True:
                job = await self.get(job_id)
                yield job
                if job.status.terminal:
                    return
                # A job on this process's own worker: every change is announced (see notify).
                announced = self.notifier.announces(job)
                await news.wait(self.settings.heartbeat_s if announced else self.settings.poll_interval_s)

    async def wait(self, job_id: str, *, timeout: float | None = None) -> JobRecord:
        """The job once terminal; :class:`WaitTimeout` after ``timeout`` (the job goes on)."""
        deadline = asyncio.timeout(timeout or self.settings.sync_timeout_s)
        try:
            async with deadline, aclosing(self.watch(job_id, progress=False)) as looks:
                async for job in looks:
                    if job.status.terminal:
                        return job
        except TimeoutError:
            if not deadline.expired():
                raise
        raise WaitTimeout(f"job {job_id} did not finish in time; follow it at /v1/jobs/{job_id}")

    async def run(self, request: GenerationRequest, **submit_args) -> JobRecord:
        """Submit and wait: the synchronous path. Raises the job's error if it did not succeed."""
        job, _ = await self.submit(request, **submit_args)
        job = await self.wait(job.id)
        raise_for_job(job)
        return job


def raise_for_job(job: JobRecord) -> None:
    """Turn a failed or canceled job into the matching error (for synchronous callers)."""
    if job.status is JobStatus.succeeded:
        return
    if job.status is JobStatus.canceled:
        raise GenerationCanceled(f"job {job.id} was canceled")
    error = job.error
    if error is None:
        raise GenerationFailed("generation failed")
    # A job the worker refused for the caller's own request (e.g. a LoRA that does not fit the
    # model) is the caller's mistake on a synchronous call too: 4xx, not a server fault.
    client_fault = _CLIENT_FAULTS.get(error.code)
    if client_fault is not None:
        raise client_fault(error.message, code=error.code)
    raise GenerationFailed(error.message, code=error.code)


_CLIENT_FAULTS = {InvalidRequest.code: InvalidRequest, NotFound.code: NotFound, PayloadTooLarge.code: PayloadTooLarge}


"""The worker loop: claim a job, run it on the engine, store its results, repeat.

A worker holds a lease on its running job and renews it while the engine works
(every progress write, at least every ``heartbeat_s``). If the worker dies, the lease
runs out and any worker or API host puts the job back in the queue (``reap_expired``);
after ``max_attempts`` runs the job fails with ``worker_lost``. Every write a worker
makes is guarded by (job, worker, attempt), so a late result from a stale attempt can
never overwrite a newer one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from dataclasses import dataclass, field

from pixelmill.domain import JobRecord, JobResult, Progress
from pixelmill.engine.runner import CancelToken, EngineRunner, EngineState
from pixelmill.errors import GenerationCanceled, GenerationFailed, PixelmillError
from pixelmill.jobs.events import JobEvents
from pixelmill.jobs.notify import Notifier
from pixelmill.jobs.store import JobStore, LeaseLost
from pixelmill.settings import Settings

log = logging.getLogger(__name__)

PROGRESS_WRITE_INTERVAL_S = 0.1
"""At most this often a running job's progress is written to the store."""
RETRYABLE_CODES = frozenset({"out_of_memory"})
"""Engine failures worth another attempt (transient); others fail the job at once."""


def default_worker_id() -> str:
    """``host:pid``, unique enough to tell workers apart in job records."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class _Run:
    """What the heartbeat and the engine callbacks share while one job runs."""

    job: JobRecord
    token: CancelToken = field(default_factory=CancelToken)
    progress: tuple[int, int] | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    cancel_requested: bool = False
    lease_lost: bool = False

    def on_progress(self, progress: Progress) -> None:
        self.progress = (progress.step, progress.total)
        self.changed.set()


class Worker:
    """Claims jobs from the store and runs them on one engine, one at a time."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        runner: EngineRunner,
        results,
        notifier: Notifier,
        events: JobEvents,
        worker_id: str | None = None,
    ):
        self.settings = settings
        self.store = store
        self.runner = runner
        self.results = results
        self.notifier = notifier
        self.events = events
        self.id = worker_id or settings.worker_id or default_worker_id()
        self._stop = asyncio.Event()
        self._current: _Run | None = None
        self._last_reap = 0.0

    # ------------------------------------------------------------------ loop
    async def run(self) -> None:
        """Serve jobs until :meth:`stop`; returns once the running job is finished or released."""
        if not await self._engine_ready():
            return
        log.info("worker %s: ready", self.id)
        while not self._stop.is_set():
            await self._reap_if_due()
            jobs = await asyncio.to_thread(self.store.claim, self.id, lease_s=self.settings.lease_s)
            if jobs:
                await self._execute(jobs[0])
            else:
                await self._idle()
        log.info("worker %s: stopped", self.id)

    async def _engine_ready(self) -> bool:
        while self.runner.state is EngineState.loading and not self._stop.is_set():
            await asyncio.sleep(0.1)
        if self.runner.state is EngineState.failed:
            log.error("worker %s: the engine failed to start; not claiming jobs", self.id)
            return False
        return not self._stop.is_set()

    async def _idle(self) -> None:
        stop = asyncio.ensure_future(self._stop.wait())
        work = asyncio.ensure_future(self.notifier.wait_work(self.settings.poll_interval_s))
        await asyncio.wait({stop, work}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        work.cancel()

    async def _reap_if_due(self) -> None:
        now = time.monotonic()
        if now - self._last_reap < min(self.settings.heartbeat_s, self.settings.lease_s / 4):
            return
        self._last_reap = now
        for job_id in await asyncio.to_thread(self.store.reap_expired):
            job = await asyncio.to_thread(self.store.get, job_id)
            log.warning("job %s: lease expired; now %s (attempt %d)", job_id, job.status.value, job.attempt)
            if job.status.terminal:
                self.events.completed(job)

    def stop(self) -> None:
        """Stop claiming; the running job finishes (see :meth:`abort`)."""
        self._stop.set()
        self.notifier.work_available()

    def abort(self) -> None:
        """Stop now: the running job is interrupted at its next step and released to the queue."""
        self.stop()
        if self._current is not None:
            self._current.token.cancel()

    async def shutdown(self, task: asyncio.Task, grace_s: float) -> None:
        """Graceful stop: let the running job finish for ``grace_s``, then release it."""
        self.stop()
        try:
            await asyncio.wait_for(asyncio.shield(task), grace_s)
        except TimeoutError:
            self.abort()
            await task

    # --------------------------------------------------------------- one job
    async def _execute(self, job: JobRecord) -> None:
        run = _Run(job)
        self._current = run
        self.notifier.job_changed(job.id)
        self.events.started(job)
        heartbeat = asyncio.create_task(self._heartbeat(run))
        try:
            outcome = await self._generate(run)
        finally:
            heartbeat.cancel()
            self._current = None
        if outcome is not None:
            final = await asyncio.to_thread(self.store.get, job.id)
            self.notifier.job_changed(job.id)
            if final.status.terminal:
                self.events.completed(final)

    async def _generate(self, run: _Run) -> str | None:
        job = run.job
        try:
            result = await self.runner.generate(job.request, on_progress=run.on_progress, cancel=run.token)
        except GenerationCanceled:
            return await self._interrupted(run)
        except PixelmillError as exc:
            retry = isinstance(exc, GenerationFailed) and exc.code in RETRYABLE_CODES
            log.warning("job %s failed (attempt %d): %s", job.id, job.attempt, exc.message)
            return await self._guarded("fail", run, code=exc.code, message=exc.message, retry=retry)
        return await self._store_result(run, result)

    async def _interrupted(self, run: _Run) -> str | None:
        if run.lease_lost:
            return None  # another attempt owns the job now; write nothing
        if run.cancel_requested:
            return await self._guarded("mark_canceled", run)
        log.info("job %s: released back to the queue (worker stopping)", run.job.id)
        return await self._guarded("release", run)

    async def _store_result(self, run: _Run, result: JobResult) -> str | None:
        put = self.results.put
        ids = [await asyncio.to_thread(put, image.data, image.media_type) for image in result.images]
        return await self._guarded(
            "complete", run, result_ids=ids, seeds=[image.seed for image in result.images],
            gpu_seconds=result.gpu_seconds, sampler=result.sampler, width=result.width, height=result.height,
            model=result.model,
        )

    async def _guarded(self, method: str, run: _Run, **kwargs) -> str | None:
        """Call a (job, worker, attempt)-guarded store method; None when the attempt was stale."""
        job = run.job
        applied = await asyncio.to_thread(getattr(self.store, method), job.id, self.id, job.attempt, **kwargs)
        if not applied:
            log.warning("job %s: attempt %d is stale; its %s was discarded", job.id, job.attempt, method)
            return None
        return method

    async def _heartbeat(self, run: _Run) -> None:
        job = run.job
        while True:
            try:
                await asyncio.wait_for(run.changed.wait(), self.settings.heartbeat_s)
            except TimeoutError:
                pass
            run.changed.clear()
            try:
                cancel = await asyncio.to_thread(
                    self.store.heartbeat, job.id, self.id, job.attempt,
                    lease_s=self.settings.lease_s, progress=run.progress,
                )
            except LeaseLost:
                log.warning("job %s: lease lost (attempt %d); stopping it", job.id, job.attempt)
                run.lease_lost = True
                run.token.cancel()
                return
            except Exception:  # the store is unreachable: keep working, the lease may still hold
                log.exception("job %s: heartbeat failed", job.id)
                await asyncio.sleep(PROGRESS_WRITE_INTERVAL_S)
                continue
            if cancel and not run.cancel_requested:
                run.cancel_requested = True
                run.token.cancel()
            self.notifier.job_changed(job.id)
            if run.progress:
                self.events.progress(job, *run.progress)
            await asyncio.sleep(PROGRESS_WRITE_INTERVAL_S)


"""The worker loop: claim a batch of jobs, run it on the engine, store results, repeat.

A batch is the oldest queued job plus up to ``max_batch_size - 1`` queued jobs with
the same batch key (see :mod:`pixelmill.batching`), waiting at most
``max_batch_wait_ms`` for company — except when the last jobs arrived one at a time,
well apart (one client sending request after request): nothing is coming to join, and
the wait would only leave the engine idle. One pipeline call makes every image; each job's
ledger gets its share of the call's time. A job canceled while its batch runs is not
interrupted (the others still want their images): the batch finishes and that job's
images are discarded. The batch stops early only when all of its jobs are canceled.

The engine is the scarce resource, so it never waits for bookkeeping: as soon as a
pipeline call returns, the next batch is claimed and started, and the finished batch's
images are stored and its jobs completed meanwhile (at most one batch is being stored
at a time). A job is marked succeeded only after its files are stored; until then it
is still ``running`` under its lease, so a crash at any point loses no job.

A worker holds a lease on its running jobs and renews it while the engine works (with
every progress write, at least every ``heartbeat_s``): one transaction for the whole
batch. If the worker dies, the lease runs out and any worker or API host puts the job
back in the queue (``reap_expired``); after ``max_attempts`` runs the job fails with
``worker_lost``. Every write a worker makes is guarded by (job, worker, attempt), so a
late result from a stale attempt can never overwrite a newer one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime

from pixelmill.batching import batch_key
from pixelmill.domain import JobRecord, JobResult, Progress
from pixelmill.engine.runner import CancelToken, EngineRunner, EngineState
from pixelmill.errors import GenerationCanceled, GenerationFailed, PixelmillError
from pixelmill.jobs.events import JobEvents
from pixelmill.jobs.notify import Notifier
from pixelmill.jobs.leases import Guard
from pixelmill.jobs.store import JobStore
from pixelmill.settings import Settings

log = logging.getLogger(__name__)

RETRYABLE_CODES = frozenset({"out_of_memory"})
"""Engine failures worth another attempt (transient); others fail the job at once."""
SEQUENTIAL_ARRIVALS = 4
"""A batch waits for company unless this many jobs in a row each arrived well apart."""
SEQUENTIAL_GAP_FACTOR = 10
""""Well apart": more than this many ``max_batch_wait_ms`` after the job before it."""


def default_worker_id() -> str:
    """``host:pid``, unique enough to tell workers apart in job records."""
    return f"{socket.gethostname()}:{os.getpid()}"


async def reap_expired_jobs(store: JobStore, notifier: Notifier, events: JobEvents) -> None:
    """Requeue (or fail, at max attempts) jobs whose worker stopped renewing its lease.

    Safe from every worker and API host at once; whoever reaps a job announces it.
    """
    for job_id in await asyncio.to_thread(store.reap_expired):
        job = await asyncio.to_thread(store.get, job_id)
        log.warning("job %s: lease expired; now %s (attempt %d)", job_id, job.status.value, job.attempt)
        notifier.job_changed(job_id)
        if job.status.terminal:
            events.completed(job)


@dataclass
class _Run:
    """One job of a running batch: what its heartbeats learned."""

    job: JobRecord
    cancel_requested: bool = False
    lease_lost: bool = False

    @property
    def active(self) -> bool:
        return not (self.cancel_requested or self.lease_lost)


@dataclass
class _Batch:
    """Jobs sharing one pipeline call, and what the heartbeat and the engine share."""

    runs: list[_Run]
    token: CancelToken = field(default_factory=CancelToken)
    progress: tuple[int, int] | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def on_progress(self, progress: Progress) -> None:
        self.progress = (progress.step, progress.total)
        self.changed.set()


class Worker:
    """Claims jobs from the store and runs them on one engine, one batch at a time."""

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
        self._current: _Batch | None = None
        self._settling: asyncio.Task | None = None  # the previous batch, being stored
        self._arrivals: deque[datetime] = deque(maxlen=SEQUENTIAL_ARRIVALS)  # created_at of recent jobs

    # ------------------------------------------------------------------ loop
    async def run(self) -> None:
        """Serve jobs until :meth:`stop`; returns once the running job is finished or released."""
        if not await self._engine_ready():
            return
        log.info("worker %s: ready", self.id)
        reaper = asyncio.create_task(self._reap_periodically())
        try:
            while not self._stop.is_set():
                jobs = await self._claim_batch()
                if jobs:
                    await self._execute(jobs)
                else:
                    await self._idle()
        finally:
            reaper.cancel()
            await self._settled()
        log.info("worker %s: stopped", self.id)

    async def _claim_batch(self) -> list[JobRecord]:
        """The oldest queued job plus compatible company, waiting briefly for more to arrive."""
        size, lease = self.settings.max_batch_size, self.settings.lease_s
        jobs = await asyncio.to_thread(self.store.claim, self.id, lease_s=lease, limit=size, batch_key=batch_key)
        if not jobs:
            return jobs
        sequential = self._sequential(jobs[0].created_at)
        deadline = time.monotonic() + self.settings.max_batch_wait_ms / 1000
        while not sequential and len(jobs) < size and (left := deadline - time.monotonic()) > 0:
            await self.notifier.wait_work(left)
            jobs += await asyncio.to_thread(
                self.store.claim_matching, self.id, lease_s=lease, limit=size - len(jobs),
                batch_key=batch_key, key=batch_key(jobs[0].request),
            )
        self._arrivals.extend(sorted(job.created_at for job in jobs))
        return jobs

    def _sequential(self, arrived: datetime) -> bool:
        """Whether recent jobs came one at a time, well apart, ending with one that ``arrived`` now.

        Then nothing is likely to join within ``max_batch_wait_ms`` (e.g. one client sending
        request after request) and waiting would only leave the engine idle. Any recent pair
        of jobs close together (a burst, several clients) brings the wait back. Arrival times
        come from the store, so jobs submitted through other hosts count too.
        """
        window = self.settings.max_batch_wait_ms / 1000 * SEQUENTIAL_GAP_FACTOR
        times = [*self._arrivals, arrived]
        gaps = [(later - earlier).total_seconds() for earlier, later in zip(times, times[1:])]
        return len(gaps) >= SEQUENTIAL_ARRIVALS and min(gaps) > window

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

    async def _reap_periodically(self) -> None:
        # Its own task, so reaping never sits between two batches on the engine.
        interval = min(self.settings.heartbeat_s, self.settings.lease_s / 4)
        while True:
            try:
                await reap_expired_jobs(self.store, self.notifier, self.events)
            except Exception:  # the store is unreachable: try again next time
                log.exception("worker %s: reaping expired leases failed", self.id)
            await asyncio.sleep(interval)

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

    # ------------------------------------------------------------- one batch
    async def _execute(self, jobs: list[JobRecord]) -> None:
        """Run one batch on the engine; returns as soon as the engine is free again."""
        batch = _Batch([_Run(job) for job in jobs])
        self._current = batch
        for job in jobs:
            self.notifier.job_changed(job.id)
            self.events.started(job)
        heartbeat = asyncio.create_task(self._heartbeat(batch))
        try:
            outcome = await self._generate(batch)
        finally:
            heartbeat.cancel()
            self._current = None
        await self._settled()  # bounded: one batch stored while the next one runs
        self._settling = asyncio.create_task(self._settle(batch, outcome))

    async def _generate(self, batch: _Batch) -> list[JobResult] | PixelmillError:
        requests = [run.job.request for run in batch.runs]
        try:
            return await self.runner.generate_batch(requests, on_progress=batch.on_progress, cancel=batch.token)
        except PixelmillError as exc:
            if not isinstance(exc, GenerationCanceled):
                log.warning("jobs %s failed: %s", [r.job.id for r in batch.runs], exc.message)
            return exc

    async def _settled(self) -> None:
        """Wait until the previous batch's outcome is stored."""
        task, self._settling = self._settling, None
        if task is None:
            return
        try:
            await task
        except Exception:  # its jobs stay running in the store; their leases run out and they run again
            log.exception("worker %s: storing a batch's outcome failed", self.id)

    async def _settle(self, batch: _Batch, outcome: list[JobResult] | PixelmillError) -> None:
        """Store each job's outcome, then announce it."""
        if isinstance(outcome, PixelmillError):
            await asyncio.gather(*(self._settle_failed(run, outcome) for run in batch.runs))
        else:
            await asyncio.gather(*(self._settle_done(run, result) for run, result in zip(batch.runs, outcome)))

    async def _settle_done(self, run: _Run, result: JobResult) -> None:
        if run.cancel_requested and not run.lease_lost:
            # The batch finished for the others; a job canceled meanwhile discards its images.
            await self._guarded("mark_canceled", run)
        elif not run.lease_lost:
            await self._store_result(run, result)
        await self._announce(run)

    async def _settle_failed(self, run: _Run, exc: PixelmillError) -> None:
        if run.lease_lost:
            pass  # another attempt owns the job now; write nothing
        elif isinstance(exc, GenerationCanceled):
            await self._interrupted(run)
        else:
            retry = isinstance(exc, GenerationFailed) and exc.code in RETRYABLE_CODES
            await self._guarded("fail", run, code=exc.code, message=exc.message, retry=retry)
        await self._announce(run)

    async def _interrupted(self, run: _Run) -> None:
        if run.cancel_requested:
            await self._guarded("mark_canceled", run)
        else:
            log.info("job %s: released back to the queue (worker stopping)", run.job.id)
            await self._guarded("release", run)

    async def _announce(self, run: _Run) -> None:
        """Wake the job's waiters (they read the store themselves), then send its webhook."""
        self.notifier.job_changed(run.job.id)
        if run.lease_lost:
            return  # another attempt owns the job now
        final = await asyncio.to_thread(self.store.get, run.job.id)
        if final.status.terminal:
            self.events.completed(final)

    async def _store_result(self, run: _Run, result: JobResult) -> None:
        put = self.results.put

        def put_all() -> tuple[list[str], list[str]]:
            # One thread hop for all of a job's files.
            return ([put(image.data, image.media_type) for image in result.images],
                    [put(image.data, image.media_type) for image in result.control_images])

        ids, control_ids = await asyncio.to_thread(put_all)
        await self._guarded(
            "complete", run, result_ids=ids, seeds=[image.seed for image in result.images], control_ids=control_ids,
            gpu_seconds=result.gpu_seconds, sampler=result.sampler, width=result.width, height=result.height,
            model=result.model,
        )

    async def _guarded(self, method: str, run: _Run, **kwargs) -> bool:
        """Call a (job, worker, attempt)-guarded store method; False when the attempt was stale."""
        job = run.job
        applied = await asyncio.to_thread(getattr(self.store, method), job.id, self.id, job.attempt, **kwargs)
        if not applied:
            log.warning("job %s: attempt %d is stale; its %s was discarded", job.id, job.attempt, method)
        return applied

    async def _heartbeat(self, batch: _Batch) -> None:
        while True:
            try:
                await asyncio.wait_for(batch.changed.wait(), self.settings.heartbeat_s)
            except TimeoutError:
                pass
            batch.changed.clear()
            await self._beat(batch)
            if not any(run.active for run in batch.runs):
                batch.token.cancel()  # every job of the batch is canceled or lost: stop now
            await asyncio.sleep(self.settings.progress_interval_s)  # bounds store writes per job

    async def _beat(self, batch: _Batch) -> None:
        """Renew the batch's leases and store its progress in one transaction; learn of cancels."""
        live = [run for run in batch.runs if not run.lease_lost]
        progress = batch.progress
        guards = [Guard(run.job.id, self.id, run.job.attempt) for run in live]
        try:
            held = await asyncio.to_thread(
                self.store.heartbeat_many, guards, lease_s=self.settings.lease_s, progress=progress
            )
        except Exception:  # the store is unreachable: keep working, the leases may still hold
            log.exception("jobs %s: heartbeat failed", [guard.job_id for guard in guards])
            return
        for run in live:
            job = run.job
            if job.id not in held:
                log.warning("job %s: lease lost (attempt %d)", job.id, job.attempt)
                run.lease_lost = True
                continue
            run.cancel_requested = run.cancel_requested or held[job.id]
            self.notifier.job_changed(job.id, progress_only=True)
            if progress:
                self.events.progress(job, *progress)

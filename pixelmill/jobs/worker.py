"""The worker loop: claim a batch of jobs, run it on the engine, store results, repeat.

A batch is the oldest queued job plus up to ``max_batch_size - 1`` queued jobs with
the same batch key (see :mod:`pixelmill.core.batching`), waiting at most
``max_batch_wait_ms`` for company, unless the recent jobs arrived one at a time, well
apart (see :class:`~pixelmill.core.batching.Arrivals`): then nothing is likely to join and
the job starts at once. One pipeline call makes every image; each job's
ledger gets its share of the call's time. A job canceled while its batch runs is not
interrupted (the others still want their images): the batch finishes and that job's
images are discarded. The batch stops early only when all of its jobs are canceled.

A worker holds a lease on its running job and renews it while the engine works
(every progress write, at least every ``heartbeat_s``). If the worker dies, the lease
runs out and any worker or API host puts the job back in the queue (``reap_expired``);
after ``max_attempts`` runs the job fails with ``worker_lost``. Every write a worker
makes is guarded by (job, worker, attempt), so a late result from a stale attempt can
never overwrite a newer one.

The worker talks to its engine through :class:`~pixelmill.core.backend.GenerationBackend`
only. How each kind of failure ends a job:

* the backend raises a :class:`~pixelmill.core.errors.PixelmillError`: the job fails with
  its code (``out_of_memory`` is retried within ``max_attempts``);
* ``out_of_memory`` on a batch of several jobs: the batch is split in halves, each run on
  its own (split again while it runs out of memory), and the worker remembers the size
  that failed as a lower cap for that batch key (see :class:`~pixelmill.jobs.batches.BatchCaps`);
* the backend raises anything else (it crashed mid-job): ``backend_error``, retried
  within ``max_attempts``;
* the backend returns a blank (NaN) image: that job fails with ``invalid_output``;
* storing the results fails (the worker's fault, not the jobs'): the batch goes back to
  the queue with its attempt counted (``storage_error`` once attempts run out) and the
  worker is degraded until it can store again (see :mod:`pixelmill.jobs.supervisor`).

Storing a batch overlaps claiming and running the next one, one batch stored at a time,
its leases renewed until it is stored (see :mod:`pixelmill.jobs.storing`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time

from pixelmill.core.backend import BackendState, GenerationBackend
from pixelmill.core.batching import Arrivals, batch_key
from pixelmill.core.errors import GenerationCanceled, GenerationFailed, ModelUnavailable, PixelmillError
from pixelmill.core.types import JobRecord, JobResult, JobStatus
from pixelmill.jobs.batches import Batch, BatchCaps, Run
from pixelmill.jobs.events import JobEvents
from pixelmill.jobs.notify import Notifier, idle_until_work, wait_event
from pixelmill.jobs.reaping import ReapClock, reap_expired_jobs
from pixelmill.jobs.outputs import INVALID_OUTPUT, blank_output_reason
from pixelmill.jobs.store import JobStore
from pixelmill.jobs.storing import PendingStore, StoreFault, stop_task, store_outcome
from pixelmill.jobs.supervisor import (Backoff, WorkerFault, WorkerHealth, WorkerState, describe_fault, stop_within,
                                       supervise)
from pixelmill.settings import Settings

log = logging.getLogger(__name__)

SEQUENTIAL_GAP_FACTOR = 5
"""Arrivals more than this many ``max_batch_wait_ms`` apart count as one at a time."""

RETRYABLE_CODES = frozenset({"out_of_memory"})
"""Engine failures worth another attempt (transient); others fail the job at once."""
PROBE_PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010800000000"
    "3a7e9b550000000a49444154789c636000000002000148afa4710000000049454e44ae426082"
)
"""A 1x1 PNG a degraded worker stores to learn whether storing results works again."""


def default_worker_id() -> str:
    """``host:pid``, unique enough to tell workers apart in job records."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Worker:
    """Claims jobs from the store and runs them on one backend, one batch at a time."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        backend: GenerationBackend,
        results,
        notifier: Notifier,
        events: JobEvents,
        worker_id: str | None = None,
    ):
        self.settings = settings
        self.store = store
        self.backend = backend
        self.results = results
        self.notifier = notifier
        self.events = events
        self.id = worker_id or settings.worker_id or default_worker_id()
        notifier.add_worker(self.id)  # its waiters here need not poll the store
        self._stop = asyncio.Event()
        self._current: Batch | None = None  # the batch generating now
        self._aborted = False
        self._pending = PendingStore(on_fault=self._interrupt_current)  # the batch being stored
        self._reap = ReapClock(settings)
        self._arrivals = Arrivals(gap_s=settings.max_batch_wait_ms / 1000 * SEQUENTIAL_GAP_FACTOR)
        self.caps = BatchCaps(settings.max_batch_size)  # lowered per batch key by running out of memory
        self.health = WorkerHealth()
        # Capped at the lease: a degraded worker looks again at least as often as a lease runs out.
        self._backoff = Backoff(cap=max(1.0, settings.lease_s))

    @property
    def unavailable(self) -> ModelUnavailable | None:
        """Why this worker cannot run a job now (None while it can, or may soon)."""
        if self.backend.state is BackendState.failed:
            return ModelUnavailable(f"the model failed to load: {self.backend.error}", code="model_unavailable")
        if self.health.state is WorkerState.degraded:
            return ModelUnavailable(self.health.reason or "the worker is degraded", code="worker_unavailable")
        return None

    # ------------------------------------------------------------------ loop
    async def run(self) -> None:
        """Serve jobs until :meth:`stop`; returns once the running job is finished or released.

        Supervised: an unexpected fault makes the worker ``degraded``; it checks again with
        backoff and serves again once it can (see :mod:`pixelmill.jobs.supervisor`).
        """
        await supervise(self.id, self._serve, self.check, self.health, self._stop, self._backoff)
        if self.health.state is not WorkerState.failed:
            self.health.set(WorkerState.stopped)
        log.info("worker %s: stopped", self.id)

    async def _serve(self) -> None:
        if not await self._backend_ready():
            return
        self.health.set(WorkerState.ready)
        log.info("worker %s: ready", self.id)
        try:
            while not self._stop.is_set():
                await self._reap_if_due()
                jobs = await self._claim_batch()
                if jobs:
                    await self._execute(jobs)
                else:
                    await self._pending.settle()  # an idle worker has nothing left to store
                    await self._idle()
        except BaseException:
            await self._pending.settle_quietly()  # never hides the fault (or cancel) on its way out
            raise
        await self._pending.settle()

    async def check(self) -> None:
        """Raise unless this worker can work: the store answers and results can be stored.

        Stores a 1-pixel probe image (swept with the expired results): only a write
        proves that writing works again.
        """
        await asyncio.to_thread(self.store.count, JobStatus.queued)
        try:
            await asyncio.to_thread(self.results.put_many, [(PROBE_PNG, "image/png")])
        except Exception as exc:
            raise WorkerFault(describe_fault(exc, "storing results failed")) from exc

    async def _claim_batch(self) -> list[JobRecord]:
        """The oldest queued job plus compatible company, waiting briefly for more to arrive."""
        size, lease = self.settings.max_batch_size, self.settings.lease_s
        # With a learned cap the head's key decides the size: take the head alone first.
        first = 1 if self.caps.learned else size
        jobs = await asyncio.to_thread(self.store.claim, self.id, lease_s=lease, limit=first, batch_key=batch_key)
        if jobs and first < (size := self.batch_cap(jobs[0].request)):
            jobs += await asyncio.to_thread(
                self.store.claim_matching, self.id, lease_s=lease, limit=size - 1,
                batch_key=batch_key, key=batch_key(jobs[0].request),
            )
        self._arrived(jobs)
        wait_s = self.settings.max_batch_wait_ms / 1000 if self._arrivals.expect_company() else 0.0
        deadline = time.monotonic() + wait_s
        while jobs and len(jobs) < size and (left := deadline - time.monotonic()) > 0:
            await self.notifier.wait_work(left)
            joined = await asyncio.to_thread(
                self.store.claim_matching, self.id, lease_s=lease, limit=size - len(jobs),
                batch_key=batch_key, key=batch_key(jobs[0].request),
            )
            self._arrived(joined)
            jobs += joined
        return jobs

    def batch_cap(self, request) -> int:
        """Most jobs in one batch of ``request``'s batch key (see :class:`BatchCaps`)."""
        return self.caps.cap(request)

    def _arrived(self, jobs: list[JobRecord]) -> None:
        self._arrivals.add([job.created_at.timestamp() for job in jobs])

    async def _backend_ready(self) -> bool:
        while self.backend.state is BackendState.loading and not self._stop.is_set():
            await asyncio.sleep(0.1)
        if self.backend.state is BackendState.failed:
            self.health.set(WorkerState.failed, f"the model failed to load: {self.backend.error}")
            log.error("worker %s: the backend failed to start; not claiming jobs", self.id)
            return False
        return not self._stop.is_set()

    async def _idle(self) -> None:
        await idle_until_work(self.notifier, self._stop, self.settings.poll_interval_s)

    async def _reap_if_due(self) -> None:
        if self._reap.due():
            await reap_expired_jobs(self.store, self.notifier, self.events)

    def stop(self) -> None:
        """Stop claiming; the running job finishes (see :meth:`abort`)."""
        self._stop.set()
        self.notifier.work_available()

    def abort(self) -> None:
        """Stop now: the running job is interrupted at its next step and released to the queue
        (a batch already generated and being stored still finishes storing)."""
        self.stop()
        self._aborted = True  # also for a batch claimed meanwhile, not yet running
        self._interrupt_current()

    def _interrupt_current(self) -> None:
        if self._current is not None:
            self._current.token.cancel()

    async def shutdown(self, task: asyncio.Task, grace_s: float) -> None:
        """Graceful stop: let the running job finish for ``grace_s``, then release it."""
        await stop_within(task, grace_s, stop=self.stop, abort=self.abort)

    # ------------------------------------------------------------- one batch
    async def _execute(self, jobs: list[JobRecord]) -> None:
        """Run one batch, then leave its outcome storing in the background (see :mod:`storing`)."""
        batch = Batch([Run(job) for job in jobs])
        self._current = batch
        if self._aborted or self._pending.failed:
            batch.token.cancel()  # the worker is aborting, or cannot store: give the batch back unrun
        self.events.batch_started(jobs)  # metrics, and the batch's job ids on this task's log lines
        for job in jobs:
            self.notifier.job_changed(job.id)
            self.events.started(job)
        held = list(batch.runs)  # whose leases the heartbeat renews: narrowed once generated
        heartbeat = asyncio.create_task(self._heartbeat(batch, held))
        done = None
        try:
            try:
                done = await self._generate(batch)
            finally:
                self._current = None
            # The others are settled: beating them would read as a lost lease (no events).
            held[:] = [run for run, _ in done]
            await self._pending.settle()  # at most one batch is being stored at a time
        except StoreFault as fault:
            # The previous batch could not be stored (it is back in the queue): neither can
            # this one. Its jobs go back unstored, their attempt not counted.
            await stop_task(heartbeat)
            await self._give_back(batch, str(fault), batch.runs if done is None else [run for run, _ in done])
            raise
        except Exception as exc:
            # Storing the outcome failed: the worker's fault, not the jobs'. They go back to
            # the queue (attempt counted) and the supervisor degrades this worker.
            await stop_task(heartbeat)
            reason = describe_fault(exc, "storing results failed")
            await self._give_back(batch, reason)
            raise WorkerFault(reason) from exc
        except BaseException:  # canceled: the leases run out and another worker runs the jobs
            heartbeat.cancel()
            raise
        self._pending.start(self._store(batch, done, heartbeat))

    async def _store(self, batch: Batch, done: list[tuple[Run, JobResult]], heartbeat: asyncio.Task) -> None:
        """Store a generated batch's outcome (in the background), then announce it; a fault
        gives the batch back and raises :class:`StoreFault`."""
        try:
            try:
                finished = await store_outcome(self.store, self.results, self.id, done)
            finally:
                await stop_task(heartbeat)  # its leases were renewed until the outcome was stored
            self._backoff.reset()  # a batch went through: the next fault starts the backoff over
            await self._announce(batch, finished)
        except Exception as exc:
            reason = describe_fault(exc, "storing results failed")
            await self._give_back(batch, reason)  # a no-op for jobs already completed (stale)
            raise StoreFault(reason) from exc

    async def _announce(self, batch: Batch, finished: dict[str, JobRecord]) -> None:
        for run in batch.runs:
            # Waiters here rely on this worker's announcements (see notify), including that
            # a job it lost has moved on: they look again and learn who holds it now.
            self.notifier.job_changed(run.job.id)
            if run.lease_lost:
                continue  # another attempt owns the job now
            final = finished.get(run.job.id) or await asyncio.to_thread(self.store.get, run.job.id)
            if final.status.terminal:
                self.events.completed(final)

    async def _give_back(self, batch: Batch, reason: str, release: list[Run] | None = None) -> None:
        """Requeue a faulted batch's jobs (attempt counted; ``storage_error`` when none are left),
        or only release its runs ``release`` (attempt not counted: another batch faulted)."""
        log.error("jobs %s: %s; back to the queue", [run.job.id for run in batch.runs], reason)
        try:
            await asyncio.gather(*(
                self._guarded("fail", run, code="storage_error", message=reason, retry=True)
                for run in batch.runs if not run.lease_lost
            ) if release is None else (self._interrupted(run) for run in release))
            await self._announce(batch, {})
        except Exception:  # the store is unreachable too: the leases run out and the reaper requeues
            log.exception("jobs %s: could not give the batch back", [run.job.id for run in batch.runs])

    async def _generate(self, batch: Batch, runs: list[Run] | None = None) -> list[tuple[Run, JobResult]]:
        """Run the batch (or the part ``runs`` of it); returns the results still to store (the
        other jobs are settled). A part that runs out of memory is run again in halves."""
        runs = batch.runs if runs is None else runs
        requests = [run.job.request for run in runs]
        try:
            if batch.token.canceled:
                raise GenerationCanceled("stopped before it ran")
            results = await self.backend.generate_batch(requests, on_progress=batch.progress_for(runs),
                                                        cancel=batch.token)
            blank = await asyncio.to_thread(lambda: [blank_output_reason(result) for result in results])
        except GenerationCanceled:
            await asyncio.gather(*(self._interrupted(run) for run in runs))
            return []
        except PixelmillError as exc:
            retry = isinstance(exc, GenerationFailed) and exc.code in RETRYABLE_CODES
            if exc.code == "out_of_memory" and (halves := self.caps.split(runs)):
                first = await self._generate(batch, halves[0])
                await self._pending.settle()
                await store_outcome(self.store, self.results, self.id, first)  # stored before the next half runs
                return await self._generate(batch, halves[1])
            await self._fail_all(runs, exc.code, exc.message, retry=retry)
            return []
        except Exception as exc:  # the backend crashed mid-job: another attempt may fare better
            log.exception("jobs %s: the backend crashed", [r.job.id for r in runs])
            await self._fail_all(runs, "backend_error", describe_fault(exc, "the backend crashed"), retry=True)
            return []
        done = []
        for run, result, reason in zip(runs, results, blank):
            if run.cancel_requested:
                # The batch finished for the others; a job canceled meanwhile discards its images.
                await self._guarded("mark_canceled", run)
            elif reason is not None and not run.lease_lost:
                log.warning("job %s: %s", run.job.id, reason)
                await self._guarded("fail", run, code=INVALID_OUTPUT, message=reason)
            elif not run.lease_lost:
                done.append((run, result))
        return done

    async def _fail_all(self, runs: list[Run], code: str, message: str, *, retry: bool) -> None:
        log.warning("jobs %s failed (%s): %s", [r.job.id for r in runs], code, message)
        await asyncio.gather(*(
            self._guarded("fail", run, code=code, message=message, retry=retry)
            for run in runs if not run.lease_lost
        ))

    async def _interrupted(self, run: Run) -> None:
        if run.lease_lost:
            return  # another attempt owns the job now; write nothing
        if run.cancel_requested:
            await self._guarded("mark_canceled", run)
        else:
            log.info("job %s: released back to the queue unfinished", run.job.id)
            await self._guarded("release", run)

    async def _guarded(self, method: str, run: Run, **kwargs) -> bool:
        """Call a (job, worker, attempt)-guarded store method; False when the attempt was stale."""
        job = run.job
        applied = await asyncio.to_thread(getattr(self.store, method), job.id, self.id, job.attempt, **kwargs)
        if not applied:
            log.warning("job %s: attempt %d is stale; its %s was discarded", job.id, job.attempt, method)
        return applied

    async def _heartbeat(self, batch: Batch, held: list[Run]) -> None:
        while True:
            await wait_event(batch.changed, self.settings.heartbeat_s)  # wait_for may swallow a cancel
            batch.changed.clear()
            await self._beat(batch, held)
            if not any(run.active for run in batch.runs):
                batch.token.cancel()  # every job of the batch is canceled or lost: stop now
            await asyncio.sleep(self.settings.progress_interval_s)  # bounds store writes per job

    async def _beat(self, batch: Batch, runs: list[Run]) -> None:
        """Renew the leases of the batch's ``runs`` and store its progress in one transaction,
        and learn which of its jobs were canceled or lost."""
        held, progress = [run for run in runs if not run.lease_lost], batch.progress
        if not held:
            return
        try:
            answers = await asyncio.to_thread(
                self.store.heartbeats, [(run.job.id, run.job.attempt) for run in held], self.id,
                lease_s=self.settings.lease_s, progress=progress,
                previews=batch.previews.take(run.job.id for run in held),
            )
        except Exception:  # the store is unreachable: keep working, the leases may still hold
            log.exception("jobs %s: heartbeat failed", [run.job.id for run in held])
            return
        for run in held:
            job, cancel = run.job, answers.get(run.job.id)
            if cancel is None:
                log.warning("job %s: lease lost (attempt %d)", job.id, job.attempt)
                run.lease_lost = True
                continue
            run.cancel_requested = run.cancel_requested or cancel
            self.notifier.job_progressed(job.id)
            if progress:
                self.events.progress(job, *progress)

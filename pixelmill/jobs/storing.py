"""Storing a generated batch, and the one store a worker keeps going while its next batch runs.

A batch's outcome is stored in two writes for the whole batch: its files, then one
transaction completing its jobs (:func:`store_outcome`). A job is ``succeeded`` only
once its files are stored.

The worker overlaps storing batch N with claiming and generating batch N+1, so the
accelerator does not sit idle while files are written and a transaction commits.
:class:`PendingStore` holds that background store and keeps it to one at a time: the
worker settles it (waits for it and learns its fault) before it stores the next batch,
before it goes idle, and before its loop ends. A store that fails has already given its
batch back to the queue; it raises :class:`StoreFault`, and the batch running meanwhile
is stopped and given back too (see :mod:`pixelmill.jobs.worker`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine

from pixelmill.core.types import JobRecord, JobResult
from pixelmill.jobs.batches import Run
from pixelmill.jobs.store import Completion, JobStore
from pixelmill.jobs.supervisor import WorkerFault, describe_fault

log = logging.getLogger(__name__)


class StoreFault(WorkerFault):
    """Storing a batch in the background failed (that batch is back in the queue)."""


async def store_outcome(store: JobStore, results, worker_id: str,
                        done: list[tuple[Run, JobResult]]) -> dict[str, JobRecord]:
    """Store the images of a batch's finished jobs, then complete the jobs; returns the jobs
    completed, as stored (a stale attempt's run is marked ``lease_lost``).

    Two writes for the whole batch (its files, then one transaction for its jobs),
    not two per job: the clients of every job in the batch wait for the last one.
    """
    if not done:
        return {}
    files = [(image.data, image.media_type)
             for _, result in done for image in (*result.images, *result.control_images)]
    ids = iter(await asyncio.to_thread(results.put_many, files))
    completions = []
    for run, result in done:
        result_ids = [next(ids) for _ in result.images]
        control_ids = [next(ids) for _ in result.control_images]
        completions.append(Completion(
            run.job.id, run.job.attempt, result_ids, [image.seed for image in result.images],
            result.gpu_seconds, result.sampler, result.width, result.height, result.model, control_ids,
        ))
    stored = await asyncio.to_thread(store.complete_batch, worker_id, completions)
    for run, _ in done:
        if stored[run.job.id] is None:
            log.warning("job %s: attempt %d is stale; its results were discarded", run.job.id, run.job.attempt)
            run.lease_lost = True  # another attempt owns the job now
    return {job_id: job for job_id, job in stored.items() if job is not None}


async def stop_task(task: asyncio.Task | None) -> None:
    """Cancel ``task`` and wait until it has ended, whatever it ended with.

    Cancels again while it runs on: a library wait that swallowed the cancellation (as
    ``asyncio.wait_for`` can on Python 3.10/3.11) must not leave this waiting forever.
    """
    while task is not None and not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=1.0)


class PendingStore:
    """The one batch a worker may be storing in the background while it runs the next.

    ``on_fault`` is called (from the event loop) as soon as a store fails, so the worker can
    stop the batch it runs meanwhile instead of finishing work it cannot store.
    """

    def __init__(self, on_fault: Callable[[], None]):
        self._task: asyncio.Task | None = None
        self._on_fault = on_fault

    def start(self, storing: Coroutine) -> None:
        """Store in the background; the previous store must have been settled."""
        if self._task is not None:
            storing.close()
            raise RuntimeError("the previous batch is still being stored")
        self._task = asyncio.create_task(storing)
        self._task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task) -> None:
        # exception() also marks the fault retrieved: settle() raises it again later.
        if not task.cancelled() and task.exception() is not None:
            self._on_fault()

    @property
    def failed(self) -> bool:
        """Whether the pending store ended with a fault that nobody settled yet."""
        task = self._task
        return task is not None and task.done() and not task.cancelled() and task.exception() is not None

    async def settle(self) -> None:
        """Wait until the pending store is done and raise its fault, if any.

        Never cancels the store: a caller canceled while waiting leaves it storing (its
        batch is done work), still pending here for the next :meth:`settle`.
        """
        task = self._task
        if task is None:
            return
        await asyncio.wait([task])
        self._task = None
        if task.cancelled():  # only when the event loop is going down
            log.warning("storing a batch was interrupted; its jobs go back to the queue when their leases run out")
        elif (fault := task.exception()) is not None:
            raise fault

    async def settle_quietly(self) -> None:
        """:meth:`settle`, logging a fault instead of raising it (another error is on its way out)."""
        try:
            await self.settle()
        except Exception as exc:
            log.error("storing a batch failed too: %s", describe_fault(exc, "storing results failed"))

"""In-process wake-ups: a worker or waiter in this process learns of news at once.

The job store is the source of truth; this only shortens waits. A waiter whose job
may change elsewhere (queued: any host's worker may claim it; running on another
process's worker) polls the store every ``poll_interval_s``, so nothing depends on a
notification arriving. A job running on a worker of this process changes only through
that worker, which announces every change here: its waiters need not poll (each poll
is a store read, taking CPU from the engine on the same machine), only check now and
then (``heartbeat_s``) that the worker is still alive.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

from pixelmill.core.types import JobRecord, JobStatus


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait until ``event`` is set (True) or ``timeout`` seconds pass (False).

    Unlike ``asyncio.wait_for`` on Python 3.10/3.11, never loses a cancellation: there,
    a task canceled at the moment the event is set gets the result instead of the
    ``CancelledError``, and a loop around it (a heartbeat) runs on after being stopped.
    """
    if event.is_set():
        return True
    waiter = asyncio.ensure_future(event.wait())
    try:
        done, _ = await asyncio.wait({waiter}, timeout=timeout)
    finally:
        waiter.cancel()  # a no-op once it is done
    return bool(done)


class JobNews:
    """News of one job since the last :meth:`wait` (see :meth:`Notifier.listen`)."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    async def wait(self, timeout: float) -> None:
        """Return at once if there was news since the last call, else at the next news
        or after ``timeout`` seconds (then poll the store)."""
        await wait_event(self.event, timeout)
        self.event.clear()


class Notifier:
    """Per-job and "new work" signals, used inside one event loop."""

    def __init__(self) -> None:
        self._job_waiters: dict[str, dict[asyncio.Event, bool]] = defaultdict(dict)  # event -> wants progress
        self._work = asyncio.Event()
        self._local_workers: set[str] = set()

    def add_worker(self, worker_id: str) -> None:
        """``worker_id`` runs in this process and announces every change it makes here."""
        self._local_workers.add(worker_id)

    def announces(self, job: JobRecord) -> bool:
        """Whether every change of ``job`` is announced here: it runs on a worker of this process."""
        return job.status is JobStatus.running and job.worker in self._local_workers

    def job_changed(self, job_id: str) -> None:
        """Wake everyone waiting on ``job_id`` (its status or result changed)."""
        for event in self._job_waiters.get(job_id, ()):
            event.set()

    def job_progressed(self, job_id: str) -> None:
        """Wake only those waiting on ``job_id`` who asked for progress (e.g. event streams).

        A caller waiting for the end (a synchronous API call) is not woken by every
        progress write just to read the job again.
        """
        for event, wants_progress in self._job_waiters.get(job_id, {}).items():
            if wants_progress:
                event.set()

    @contextmanager
    def listen(self, job_id: str, *, progress: bool = True) -> Iterator[JobNews]:
        """Register for news of ``job_id`` (its changes; its progress too, if ``progress``).

        Listen *before* reading the job: news that comes between the read and the wait
        is kept, not lost (a lost announcement would cost a whole poll interval).
        """
        news = JobNews()
        self._job_waiters[job_id][news.event] = progress
        try:
            yield news
        finally:
            waiters = self._job_waiters[job_id]
            waiters.pop(news.event, None)
            if not waiters:
                del self._job_waiters[job_id]

    def work_available(self) -> None:
        """A job was queued: wake an idle worker of this process now."""
        self._work.set()

    async def wait_work(self, timeout: float) -> None:
        """Return when work was queued in this process, or after ``timeout`` seconds."""
        await wait_event(self._work, timeout)
        self._work.clear()


async def idle_until_work(notifier: Notifier, stop: asyncio.Event, timeout: float) -> None:
    """Wait for work queued in this process, ``stop``, or ``timeout`` seconds (whichever first)."""
    stopped = asyncio.ensure_future(stop.wait())
    work = asyncio.ensure_future(notifier.wait_work(timeout))
    try:
        await asyncio.wait({stopped, work}, return_when=asyncio.FIRST_COMPLETED)
    finally:  # also when the caller is canceled: no waiter left behind on the stop event
        stopped.cancel()
        work.cancel()

"""In-process wake-ups: a worker or waiter in this process learns of news at once.

The job store is the source of truth; this only shortens waits. A worker of this
process announces every change of the jobs it runs (:meth:`Notifier.job_changed`).
Changes made elsewhere (a worker or API host on another machine) are found by polling
the store every ``poll_interval_s`` — once for *all* the jobs followed in this process,
not once per waiter: with many clients waiting, per-waiter polling was a steady load of
store reads competing with the engine for the CPU.

Progress is announced separately from status changes, so a synchronous caller that only
wants the end is not woken (and does not re-read the job) at every progress write.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

from pixelmill.domain import JobRecord, JobStatus

log = logging.getLogger(__name__)

JobState = tuple
"""What a poll compares: ``(status, attempt, worker, cancel_requested)``."""
StateReader = Callable[[list[str], bool], Awaitable[tuple[object, dict[str, tuple[JobState, int]]]]]
"""``read(job_ids, queue)`` → (queue marker or None, ``{job_id: (state, progress_step)}``)."""


def job_state(job: JobRecord) -> tuple[JobState, int]:
    """The (state, progress step) of ``job`` as a poll sees it."""
    return (job.status.value, job.attempt, job.worker, job.cancel_requested), job.progress_step


class Subscription:
    """One waiter's interest in one job.

    The waiter calls :meth:`clear` *before* reading the job and :meth:`saw` with what it
    read: a change that lands while the read is in flight still wakes the next
    :meth:`wait`, and a poll wakes it only when the store differs from what it saw.
    """

    def __init__(self, job_id: str, progress: bool):
        self.job_id = job_id
        self.progress = progress
        self.seen: tuple[JobState, int] | None = None
        self._event = asyncio.Event()

    def clear(self) -> None:
        self._event.clear()

    def saw(self, job: JobRecord) -> None:
        """Remember what the waiter read, the baseline of the next poll."""
        self.seen = job_state(job)

    def set(self) -> None:
        self._event.set()

    @property
    def is_set(self) -> bool:
        """Whether a change was signalled since the last :meth:`clear`."""
        return self._event.is_set()

    async def wait(self, timeout: float) -> None:
        """Return when the job changed since the last :meth:`clear`, or after ``timeout`` s."""
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except TimeoutError:
            pass


class Notifier:
    """Per-job and "new work" signals, used inside one event loop."""

    def __init__(self) -> None:
        self._job_waiters: dict[str, set[Subscription]] = defaultdict(set)
        self._work = asyncio.Event()
        self._read: StateReader | None = None
        self._interval = 0.2
        self._poller: asyncio.Task | None = None
        self._marker: object = None

    def job_changed(self, job_id: str, *, progress_only: bool = False) -> None:
        """Wake everyone waiting on ``job_id``; with ``progress_only`` only those who asked for progress."""
        for waiter in self._job_waiters.get(job_id, ()):
            if waiter.progress or not progress_only:
                waiter.set()

    @contextmanager
    def subscribe(self, job_id: str, *, progress: bool = True) -> Iterator[Subscription]:
        """Follow ``job_id`` for the ``with`` block (``progress=False``: status changes only).

        With a store reader set (:meth:`poll_store_with`), the job is also polled for
        changes made by other processes.
        """
        waiter = Subscription(job_id, progress)
        self._job_waiters[job_id].add(waiter)
        if self._read is not None and (self._poller is None or self._poller.done()):
            self._poller = asyncio.create_task(self._poll())
        try:
            yield waiter
        finally:
            waiters = self._job_waiters[job_id]
            waiters.discard(waiter)
            if not waiters:
                del self._job_waiters[job_id]

    async def wait_job(self, job_id: str, timeout: float) -> None:
        """Return when ``job_id`` changes here, or after ``timeout`` seconds (poll then)."""
        with self.subscribe(job_id) as waiter:
            await waiter.wait(timeout)

    # ---- polling for changes made elsewhere ----------------------------------------------------

    def poll_store_with(self, read: StateReader, interval: float) -> None:
        """Poll with ``read`` every ``interval`` seconds while any job is followed (idempotent)."""
        self._read, self._interval = read, interval

    async def _poll(self) -> None:
        while self._job_waiters:
            await asyncio.sleep(self._interval)
            subscriptions = [w for waiters in list(self._job_waiters.values()) for w in waiters]
            if not subscriptions:
                break
            # Queue positions (shown to progress followers of queued jobs) move with the queue.
            queue = any(w.progress and w.seen and w.seen[0][0] == JobStatus.queued.value for w in subscriptions)
            try:
                marker, states = await self._read(list(self._job_waiters), queue)
            except Exception:  # the store is unreachable: waiters read it themselves after their timeout
                log.exception("polling the job store failed")
                continue
            moved = queue and marker != self._marker
            self._marker = marker
            for waiter in subscriptions:
                self._compare(waiter, states.get(waiter.job_id), moved)

    @staticmethod
    def _compare(waiter: Subscription, now: tuple[JobState, int] | None, queue_moved: bool) -> None:
        if waiter.seen is None or waiter.is_set:
            return  # it has not read the job yet, or will read it anyway
        if now is None or now[0] != waiter.seen[0]:
            waiter.set()
        elif waiter.progress and (now[1] != waiter.seen[1] or (queue_moved and now[0][0] == JobStatus.queued.value)):
            waiter.set()

    # ---- new work ------------------------------------------------------------------------------

    def work_available(self) -> None:
        """A job was queued: wake an idle worker of this process now."""
        self._work.set()

    async def wait_work(self, timeout: float) -> None:
        """Return when work was queued in this process, or after ``timeout`` seconds."""
        try:
            await asyncio.wait_for(self._work.wait(), timeout)
        except TimeoutError:
            pass
        self._work.clear()

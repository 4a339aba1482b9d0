"""In-process wake-ups: a worker or waiter in this process learns of news at once.

The job store is the source of truth; this only shortens waits. Waiters on other
hosts (an API host whose worker runs elsewhere) fall back to polling the store every
``poll_interval_s``, so nothing depends on a notification arriving.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict


class Notifier:
    """Per-job and "new work" signals, used inside one event loop."""

    def __init__(self) -> None:
        self._job_waiters: dict[str, dict[asyncio.Event, bool]] = defaultdict(dict)  # event -> wants progress
        self._work = asyncio.Event()

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

    async def wait_job(self, job_id: str, timeout: float, *, progress: bool = True) -> None:
        """Return when ``job_id`` changes here (or progresses, if ``progress``), or after
        ``timeout`` seconds (poll then)."""
        event = asyncio.Event()
        self._job_waiters[job_id][event] = progress
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            pass
        finally:
            waiters = self._job_waiters[job_id]
            waiters.pop(event, None)
            if not waiters:
                del self._job_waiters[job_id]

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

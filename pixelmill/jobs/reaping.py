"""Expired leases: putting the jobs of dead workers back in the queue (or failing them at
their last attempt), from every worker and API host, and how often a worker does it.
"""

from __future__ import annotations

import asyncio
import logging
import time

from pixelmill.jobs.events import JobEvents
from pixelmill.jobs.notify import Notifier
from pixelmill.jobs.store import JobStore
from pixelmill.settings import Settings

log = logging.getLogger(__name__)


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


class ReapClock:
    """When a worker (local or upstream) should reap expired leases: every heartbeat, and at
    least four times per lease, whoever else reaps too."""

    def __init__(self, settings: Settings):
        self.interval = min(settings.heartbeat_s, settings.lease_s / 4)
        self._last = 0.0

    def due(self) -> bool:
        """Whether to reap now (and start the next interval if so)."""
        now = time.monotonic()
        if now - self._last < self.interval:
            return False
        self._last = now
        return True

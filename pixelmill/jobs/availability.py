"""Whether a submitted job can run, and why a queued one waits.

A server whose embedded workers cannot run (the model failed to load, or every worker
is degraded) refuses submissions at once with 503 naming the reason, instead of
accepting jobs that would only wait for the synchronous timeout. A worker still loading
its model does not refuse: the job waits in the queue for it, as designed.

An API-only host (``--workers 0``) relies on remote workers it cannot see, so it accepts
jobs as before; a queued job then tells why it waits when no worker has shown a sign of
life for a lease period. The sign of life is a job heartbeat: a live worker either holds
a running job (renewed every ``heartbeat_s``) or is idle and claims a queued job within
``poll_interval_s``, so a job queued for a whole lease while no running job was renewed
means no worker is serving this queue. No table of its own is needed for that.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Protocol

from pixelmill.core.errors import ModelUnavailable
from pixelmill.core.types import JobRecord, JobStatus
from pixelmill.jobs.store import JobStore
from pixelmill.settings import Settings


class _Servable(Protocol):
    """What availability needs of a worker (see :class:`~pixelmill.jobs.worker.Worker`)."""

    @property
    def unavailable(self) -> ModelUnavailable | None: ...


class Availability:
    """Answers "can a job run here?" for ``JobService.submit`` and the job view."""

    def __init__(self, settings: Settings, store: JobStore, workers: Sequence[_Servable]):
        self.settings = settings
        self.store = store
        self.workers = workers  # this process's embedded workers (none on an API-only host)

    @property
    def silence_s(self) -> float:
        """How long a queue may go without a sign of a worker before queued jobs say so."""
        return self.settings.lease_s

    def unavailable(self) -> ModelUnavailable | None:
        """Why no embedded worker can run a job now; None when one can (or may soon), or
        when there are none (an API-only host trusts remote workers)."""
        reasons = [worker.unavailable for worker in self.workers]
        if not reasons or any(reason is None for reason in reasons):
            return None
        return reasons[0]

    def check(self) -> None:
        """Raise :class:`ModelUnavailable` (503) naming the reason when no job can run here.

        Only local jobs ask: ``JobService.submit`` skips it for a job the gateway routes to
        an upstream backend, which does not need a local worker.
        """
        error = self.unavailable()
        if error is not None:
            hint = "restart it once fixed" if error.code == "model_unavailable" else "retry shortly"
            raise ModelUnavailable(f"this server cannot run jobs: {error.message}; {hint}", code=error.code)

    async def waiting_reason(self, job: JobRecord) -> str | None:
        """Why the queued ``job`` is not running, when something is wrong; None otherwise."""
        if job.status is not JobStatus.queued or job.route != "local":
            return None  # an upstream job waits for its backend's worker, not for local ones
        if (error := self.unavailable()) is not None:
            return error.message
        if self.workers:
            return None  # an embedded worker is serving or loading its model: it will come
        now = datetime.now(timezone.utc)
        if (now - job.created_at).total_seconds() < self.silence_s:
            return None
        last = await asyncio.to_thread(self.store.last_heartbeat)
        if last is not None and (now - last).total_seconds() < self.silence_s:
            return None  # workers are alive, just busy
        return (f"no worker has been seen for {self.silence_s:.0f} s (none claimed a job or renewed a "
                "lease): start one with `pixelmill worker` against this database")

"""A job's outward events: webhooks for ``started``, ``progress`` and ``completed``.

Deliveries run in the background so a slow receiver never slows a worker; each
attempt's outcome is written to the job (``webhook_state``) so users can see it.
"""

from __future__ import annotations

import asyncio
import logging

from pixelmill.core.types import JobRecord
from pixelmill.jobs.store import JobStore
from pixelmill.jobs.views import job_public
from pixelmill.outbound.webhooks import ProgressThrottle, WebhookSender

log = logging.getLogger(__name__)

class JobEvents:
    """Sends each job's webhooks, if it asked for them, without blocking the caller."""

    def __init__(self, store: JobStore, sender: WebhookSender | None, *, base_url: str = ""):
        self.store = store
        self.sender = sender
        self.base_url = base_url
        self._tasks: set[asyncio.Task] = set()
        self._states: dict[str, dict] = {}
        self._throttle = ProgressThrottle()  # progress webhooks: at most one a second per job

    def started(self, job: JobRecord) -> None:
        self._dispatch(job, "started")

    def progress(self, job: JobRecord, step: int, total: int) -> None:
        if self._throttle.should_send(job.id, step, total):
            self._dispatch(job, "progress")

    def completed(self, job: JobRecord) -> None:
        self._throttle.forget(job.id)
        self._dispatch(job, "completed")

    def _dispatch(self, job: JobRecord, event: str) -> None:
        if self.sender is None or job.webhook is None or event not in job.webhook.events:
            return
        task = asyncio.create_task(self._deliver(job.id, job.webhook.url, event))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, job_id: str, url: str, event: str) -> None:
        job = await asyncio.to_thread(self.store.get, job_id)  # the body is the job as it is now
        body = job_public(job, base_url=self.base_url).model_dump(mode="json")
        result = await self.sender.deliver(url, event, body)
        state = self._states.setdefault(job_id, dict(job.webhook_state or {}))
        state[event] = result.model_dump(mode="json")
        await asyncio.to_thread(self.store.update_webhook_state, job_id, dict(state))
        if event == "completed":
            self._states.pop(job_id, None)
        if not result.ok:
            log.warning("job %s: %s webhook failed: %s", job_id, event, result.error)

    async def drain(self, timeout: float) -> None:
        """Wait (bounded) for deliveries still in flight, e.g. at shutdown."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)

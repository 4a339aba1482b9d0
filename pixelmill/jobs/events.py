"""A job's outward events: webhooks for ``started``, ``progress`` and ``completed``.

Deliveries run in the background so a slow receiver never slows a worker; each
attempt's outcome is written to the job (``webhook_state``) so users can see it. The same
events feed this process's job metrics (:class:`~pixelmill.observe.metrics.JobMetrics`).
"""

from __future__ import annotations

import asyncio
import logging

from datetime import datetime

from pixelmill.core.types import JobRecord
from pixelmill.jobs.predictions import prediction_view
from pixelmill.jobs.store import JobStore
from pixelmill.jobs.views import job_public
from pixelmill.observe.logs import bind_jobs, unbind_job
from pixelmill.observe.metrics import JobMetrics
from pixelmill.outbound.webhooks import ProgressThrottle, WebhookSender

log = logging.getLogger(__name__)

class JobEvents:
    """Sends each job's webhooks, if it asked for them, without blocking the caller."""

    def __init__(
        self, store: JobStore, sender: WebhookSender | None, *, base_url: str = "",
        metrics: JobMetrics | None = None,
    ):
        self.store = store
        self.metrics = metrics or JobMetrics()
        self.sender = sender
        self.base_url = base_url
        self._tasks: set[asyncio.Task] = set()
        self._states: dict[str, dict] = {}
        self._throttle = ProgressThrottle()  # progress webhooks: at most one a second per job

    def batch_started(self, jobs: list[JobRecord]) -> None:
        """A worker starts running ``jobs`` as one batch (before their ``started`` events):
        metrics, and the jobs' ids on every log line of the worker's task from now on."""
        bind_jobs([job.id for job in jobs])
        self.metrics.batch_started(_seconds(job.created_at, job.started_at) or 0.0 for job in jobs)

    def started(self, job: JobRecord) -> None:
        self._dispatch(job, "started")

    def progress(self, job: JobRecord, step: int, total: int) -> None:
        if self._throttle.should_send(job.id, step, total):
            self._dispatch(job, "progress")

    def completed(self, job: JobRecord) -> None:
        self._throttle.forget(job.id)
        self.metrics.job_finished(job.status.value, _seconds(job.started_at, job.finished_at), job.images,
                                  job.gpu_seconds)
        self._dispatch(job, "completed")
        unbind_job(job.id)  # after the dispatch: its delivery's log lines still name the job

    def _dispatch(self, job: JobRecord, event: str) -> None:
        if self.sender is None or job.webhook is None or event not in job.webhook.events:
            return
        task = asyncio.create_task(self._deliver(job.id, job.webhook.url, event))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, job_id: str, url: str, event: str) -> None:
        job = await asyncio.to_thread(self.store.get, job_id)  # the body is the job as it is now
        result = await self.sender.deliver(url, event, self._body(job), signing=job.webhook.signing)
        # refused: the URL guard sent nothing; failed: the receiver or the network, after retries
        outcome = "delivered" if result.ok else "failed" if result.attempts else "refused"
        self.metrics.webhook_delivered(event, outcome)
        state = self._states.setdefault(job_id, dict(job.webhook_state or {}))
        state[event] = result.model_dump(mode="json")
        await asyncio.to_thread(self.store.update_webhook_state, job_id, dict(state))
        if event == "completed":
            self._states.pop(job_id, None)
        if not result.ok:
            log.warning("job %s: %s webhook failed: %s", job_id, event, result.error)

    def _body(self, job: JobRecord) -> dict:
        """What the delivery carries: the native job view, or the Replicate prediction
        (its URLs on the base URL the prediction was created under)."""
        if job.webhook.body == "prediction":
            return prediction_view(job, base_url=job.webhook.base_url or self.base_url,
                                   prediction_id=job.webhook.prediction_id)
        return job_public(job, base_url=self.base_url).model_dump(mode="json")

    async def drain(self, timeout: float) -> None:
        """Wait (bounded) for deliveries still in flight, e.g. at shutdown."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    return (end - start).total_seconds() if start is not None and end is not None else None

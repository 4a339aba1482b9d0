"""Server-Sent Events for a job, read from the store so any API host can serve them.

Events: ``queued`` (position), ``started`` (attempt, worker), ``progress`` (step,
total), ``preview`` (step, total and ``image``, a small JPEG as a ``data:`` URL, whenever
the worker stored a new live preview; see docs/previews.md), then one of ``succeeded``
(the job with result URLs), ``failed`` (the job with its error) or ``canceled``. A
comment line is sent every 15 s while nothing changes so proxies keep the connection open.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

from pixelmill.core.types import JobRecord, JobStatus
from pixelmill.jobs.service import JobService
from pixelmill.jobs.views import job_public

KEEPALIVE_S = 15.0


def sse(event: str, data: dict) -> bytes:
    """One SSE message."""
    return f"event: {event}\ndata: {json.dumps(data, default=str)}\n\n".encode()


async def job_events(service: JobService, job_id: str, base_url: str) -> AsyncIterator[tuple[str, dict, JobRecord]]:
    """(event, data, job) for each look at the job; ``event`` is "" when nothing changed.

    Ends after the terminal event. Looks come when a worker in this process reports a
    change, else every ``poll_interval_s`` (see :meth:`JobService.watch`).
    """
    seen: set[tuple] = set()
    async for job in service.watch(job_id):
        if job.status.terminal:
            yield job.status.value, job_public(job, base_url=base_url).model_dump(mode="json"), job
            return
        emitted = False
        for key, event, data in await _snapshot(service, job):
            if key not in seen:
                seen.add(key)
                emitted = True
                yield event, data, job
        if not emitted:
            yield "", {}, job


async def _snapshot(service: JobService, job: JobRecord) -> list[tuple[tuple, str, dict]]:
    """The events that describe ``job`` now, each with a key that says when it is new."""
    if job.status is JobStatus.queued:
        position = await service.queue_position(job.id)
        return [(("queued", job.attempt, position), "queued", {"position": position})]
    events = [(("started", job.attempt), "started", {"attempt": job.attempt, "worker": job.worker})]
    if job.progress_step:
        progress = {"step": job.progress_step, "total": job.progress_total}
        events.append((("progress", job.attempt, job.progress_step), "progress", progress))
    # Previews off here (preview_steps 0): no look at the preview table either.
    preview = await service.preview(job.id) if service.settings.preview_steps > 0 else None
    if preview is not None:
        data = {"step": preview.step, "total": job.progress_total, "image": preview.data_url()}
        events.append((("preview", preview.attempt, preview.step), "preview", data))
    return events


async def job_event_stream(service: JobService, job_id: str, base_url: str) -> AsyncIterator[bytes]:
    """The SSE byte stream of :func:`job_events`, with keep-alive comments."""
    last_sent = time.monotonic()
    async for event, data, _ in job_events(service, job_id, base_url):
        if event:
            yield sse(event, data)
        elif time.monotonic() - last_sent > KEEPALIVE_S:
            yield b": keep-alive\n\n"
        else:
            continue
        last_sent = time.monotonic()

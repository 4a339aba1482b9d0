"""The public view of a job: what ``GET /v1/jobs/{id}`` returns and webhooks send.

It lives in the jobs layer (not the API) because workers send the same body in
webhooks; the API uses these models as its response schemas.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from pixelmill.core.types import JobError, JobRecord, JobStatus, Mode


class ProgressPublic(BaseModel):
    """Denoising steps done of the total: sampled while running, complete once succeeded."""

    step: int
    total: int


class ResultPublic(BaseModel):
    """One result image: where to download it and the seed that made it."""

    url: str
    seed: int


class JobPublic(BaseModel):
    """A job as clients see it."""

    id: str
    object: str = "job"
    status: JobStatus
    batch_id: str | None = None
    queue_position: int | None = Field(None, description="1 = next to run; only while queued (in lists too).")
    waiting_reason: str | None = Field(
        None, description="Only while queued, when something is wrong: why no worker runs the job.")
    progress: ProgressPublic | None = None
    attempt: int
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    worker: str | None = None
    results: list[ResultPublic] = Field(default_factory=list)
    control_results: list[ResultPublic] = Field(default_factory=list, description="Preprocessed control images.")
    error: JobError | None = None
    webhook_state: dict | None = None
    model: str | None = None
    mode: Mode
    width: int | None = None
    height: int | None = None
    steps: int
    images: int = 0
    gpu_seconds: float | None = None
    route: str = Field("local", description=(
        "Who serves the job: `local` (this server's workers) or the name of the upstream backend the "
        "gateway sent it to (docs/gateway.md); never a URL or credential."))
    upstream_id: str | None = Field(
        None, description="Admin keys only: the upstream's id of the job (a prediction id), for operators.")


def file_url(base_url: str, file_id: str) -> str:
    """Download URL of a result file (relative when no base URL is known)."""
    return f"{base_url.rstrip('/')}/v1/files/{file_id}"


def job_public(
    job: JobRecord, *, base_url: str = "", queue_position: int | None = None, waiting_reason: str | None = None,
    operator: bool = False,
) -> JobPublic:
    """Render ``job`` for clients; result URLs are built on ``base_url``.

    ``route`` (local or the backend's name) is for everyone who may see the job; the
    upstream's id only for ``operator`` (an admin key): webhooks and SSE go to whoever
    submitted, so they never carry it.
    """
    progress = None
    if job.status is JobStatus.succeeded:
        # Progress is sampled while the job runs, so the last sample may lag the end;
        # a job that succeeded ran every step.
        total = job.progress_total or job.steps
        progress = ProgressPublic(step=total, total=total)
    elif job.status is JobStatus.running or job.progress_total:
        progress = ProgressPublic(step=job.progress_step, total=job.progress_total)
    return JobPublic(
        id=job.id, status=job.status, batch_id=job.batch_id, queue_position=queue_position,
        waiting_reason=waiting_reason,
        progress=progress, attempt=job.attempt, created_at=job.created_at, started_at=job.started_at,
        finished_at=job.finished_at, worker=job.worker,
        results=[ResultPublic(url=file_url(base_url, fid), seed=seed) for fid, seed in zip(job.result_ids, job.result_seeds)],
        control_results=[ResultPublic(url=file_url(base_url, fid), seed=0) for fid in job.control_result_ids],
        error=job.error, webhook_state=job.webhook_state, model=job.model, mode=job.mode,
        width=job.width, height=job.height, steps=job.steps, images=job.images, gpu_seconds=job.gpu_seconds,
        route=job.route, upstream_id=job.upstream_id if operator else None,
    )

"""A job as a Replicate prediction: what the Replicate dialect answers and its webhooks send.

It lives in the jobs layer, next to :mod:`pixelmill.jobs.views`, because webhooks of
predictions are sent by whichever process runs the job (a worker never imports the API).
Every job can be shown this way; the dialect's routes and :class:`~pixelmill.jobs.events.JobEvents`
both call :func:`prediction_view`.

What the official ``replicate`` client needs (1.0.7, ``replicate/prediction.py``): ``id``,
``model``, ``version`` and a ``status`` among ``starting``, ``processing``, ``succeeded``,
``failed``, ``canceled`` (any other value makes it raise); ``logs`` whose last tqdm-style
line (`` 40%|####      | 8/20``) its ``.progress`` parses.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone

from pixelmill.core.types import JobRecord, JobStatus, Mode
from pixelmill.jobs.views import file_url

PREFIX = "/replicate"
"""Where the Replicate dialect is mounted (``{PREFIX}/v1/predictions``): see docs/replicate.md."""
OWNER = "pixelmill"
"""Owner of the names this server gives its own models (``pixelmill/<checkpoint>``)."""
DEFAULT_NAME = "default"
"""``pixelmill/default``: the server's default model, whatever it is."""

STATUS = {
    JobStatus.queued: "starting",
    JobStatus.running: "processing",
    JobStatus.succeeded: "succeeded",
    JobStatus.failed: "failed",
    JobStatus.canceled: "canceled",
}
"""Job status → prediction status (Replicate has no separate "queued": a cold start is "starting")."""

BAR_WIDTH = 10


def version_id(model: str) -> str:
    """The version id of ``model`` (``owner/name``): 64 hex characters like Replicate's, stable
    for a name, so ``owner/name:<id>`` keeps naming the same model across restarts."""
    return hashlib.sha256(f"pixelmill-version:{model}".encode()).hexdigest()


def local_model_name(job: JobRecord) -> str:
    """``pixelmill/<model>``: the prediction's ``model``, the local model the request resolved
    to (``pixelmill/default`` for the default model when the server names none). Stable over
    the job's life, so every webhook of one prediction names the same model and version."""
    return f"{OWNER}/{job.request.model or DEFAULT_NAME}"


def timestamp(value: datetime | None) -> str | None:
    """RFC 3339 in UTC with a ``Z``, as Replicate writes times."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def progress_line(step: int, total: int) -> str:
    """A tqdm-style progress line: ``` 40%|####      | 8/20```."""
    total = max(total, 1)
    step = min(max(step, 0), total)
    filled = BAR_WIDTH * step // total
    return f"{100 * step // total:3d}%|{'#' * filled}{' ' * (BAR_WIDTH - filled)}| {step}/{total}"


def prediction_logs(job: JobRecord) -> str:
    """The prediction's ``logs``: the seed it used, then its denoising progress."""
    lines = [f"Using seed: {job.request.seed}"]
    if job.status is JobStatus.succeeded:
        total = job.progress_total or job.steps
        lines.append(progress_line(total, total))
    elif job.progress_total:
        lines.append(progress_line(job.progress_step, job.progress_total))
    if job.status is JobStatus.canceled:
        lines.append("Canceled")
    return "\n".join(lines) + "\n"


def prediction_input(job: JobRecord) -> dict:
    """The input as it ran, in the SDXL model's field names (images are not repeated)."""
    request = job.request
    values = {
        "prompt": request.prompt,
        "negative_prompt": request.negative_prompt or None,
        "width": job.width,
        "height": job.height,
        "num_outputs": request.n,
        "num_inference_steps": request.steps,
        "guidance_scale": request.guidance,
        "scheduler": request.scheduler,
        "seed": request.seed,
        "prompt_strength": request.strength if request.mode is not Mode.txt2img else None,
        "output_format": request.output_format.value,
        "output_quality": request.output_quality,
    }
    return {key: value for key, value in values.items() if value is not None}


def prediction_metrics(job: JobRecord) -> dict:
    """``predict_time``: the accelerator seconds of the ledger; ``total_time``: created to finished."""
    metrics: dict = {}
    if job.gpu_seconds is not None:
        metrics["predict_time"] = round(job.gpu_seconds, 6)
    if job.finished_at is not None:
        metrics["total_time"] = round((job.finished_at - job.created_at).total_seconds(), 6)
    return metrics


def prediction_view(
    job: JobRecord, *, base_url: str = "", status: str | None = None, prediction_id: str | None = None,
) -> dict:
    """``job`` as a Replicate prediction (a JSON-ready dict); URLs are built on ``base_url``.

    ``status`` overrides the prediction status (the create route reports a job that did
    not finish within ``Prefer: wait`` as ``starting``: see the router); ``prediction_id``
    the id (a Cog client's own id for the job).
    """
    base = base_url.rstrip("/")
    model = local_model_name(job)
    own = f"{base}{PREFIX}/v1/predictions/{job.id}"
    succeeded = job.status is JobStatus.succeeded
    return {
        "id": prediction_id or job.id,
        "model": model,
        "version": version_id(model),
        "input": prediction_input(job),
        "logs": prediction_logs(job),
        "output": [file_url(base, file_id) for file_id in job.result_ids] if succeeded else None,
        "data_removed": False,
        "error": job.error.message if job.status is JobStatus.failed and job.error else None,
        "status": status or STATUS[job.status],
        "source": "api",
        "created_at": timestamp(job.created_at),
        "started_at": timestamp(job.started_at),
        "completed_at": timestamp(job.finished_at) if job.status.terminal else None,
        "metrics": prediction_metrics(job),
        "urls": {"get": own, "cancel": f"{own}/cancel"},
    }

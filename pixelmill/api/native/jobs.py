"""Native job routes: ``/v1/jobs`` (submit, inspect, list, cancel, events) and ``/v1/batches``."""

from __future__ import annotations

import asyncio
import re
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query
from fastapi.responses import JSONResponse, StreamingResponse

from pixelmill.api.auth import PrincipalDep, SubmitterDep, current_principal
from pixelmill.api.deps import BaseUrlDep, ServicesDep
from pixelmill.api.errors import wire_params
from pixelmill.api.intake import build_requests, check_batch_size
from pixelmill.api.native.events import job_event_stream
from pixelmill.api.native.protocol import PARAM_NAMES, BatchCreate, BatchPublic, JobCreate
from pixelmill.api.offload import run_cpu
from pixelmill.api.params import BatchId, JobId, PageCursor, Since, reject_unknown_query
from pixelmill.auth.keys import Principal
from pixelmill.core.types import JobRecord, JobStatus
from pixelmill.core.errors import Conflict, InvalidRequest, NotFound
from pixelmill.jobs.archive import job_entries, zip_stream
from pixelmill.jobs.views import JobPublic, job_public
from pixelmill.outbound.netguard import check_url
from pixelmill.services import Services

router = APIRouter(prefix="/v1", tags=["Jobs"],
                   dependencies=[Depends(current_principal), Depends(reject_unknown_query)])
IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,200}$")


async def _public(services: Services, job: JobRecord, base_url: str, who: Principal) -> JobPublic:
    # The upstream's id is for operators (admin keys); route, the backend's name, for all.
    if job.status is not JobStatus.queued:
        return job_public(job, base_url=base_url, operator=who.is_admin)
    position = await services.jobs.queue_position(job.id)
    reason = await services.availability.waiting_reason(job)
    return job_public(job, base_url=base_url, queue_position=position, waiting_reason=reason,
                      operator=who.is_admin)


async def _owned_job(services: Services, who: Principal, job_id: str) -> JobRecord:
    """The job, if ``who`` may see it; another key's job is "not found", like a missing one."""
    job = await services.jobs.get(job_id)
    if not who.owns(job.api_key_id):
        raise NotFound(f"job {job_id!r} does not exist", param="job_id")
    return job


async def _check_batch_owner(services: Services, who: Principal, batch_id: str) -> None:
    """NotFound unless ``who`` may see the batch (all of a batch's jobs share one key)."""
    if who.is_admin:
        return
    list_jobs = services.store.list_jobs
    mine, _ = await asyncio.to_thread(list_jobs, batch_id=batch_id, limit=1, api_key_id=who.key_id)
    if not mine:
        raise NotFound(f"batch {batch_id!r} does not exist", param="batch_id")


def _check_webhook(services: Services, url: str | None) -> None:
    if url is not None:
        check_url(url, allow_private=services.settings.webhook_allow_private, param="webhook")


@router.post("/jobs", status_code=202, response_model=JobPublic)
async def create_job(
    body: JobCreate,
    services: ServicesDep,
    base_url: BaseUrlDep,
    who: SubmitterDep,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
):
    """Queue a generation; answers 202 once the job is committed. Same ``Idempotency-Key`` and body ⇒ same job."""
    if idempotency_key is not None and not IDEMPOTENCY_KEY.fullmatch(idempotency_key):
        raise InvalidRequest("Idempotency-Key must be 1-200 printable ASCII characters", param="Idempotency-Key")
    _check_webhook(services, body.webhook)
    with wire_params(PARAM_NAMES):
        request = await run_cpu(body.generation().to_request, services.settings)  # decoding: off the loop
        job, created = await services.jobs.submit(
            request, idempotency_key=idempotency_key, webhook=body.webhook_spec(), priority=body.priority,
            **who.submit_args(),
        )
    public = await _public(services, job, base_url, who)
    headers = {"Location": f"{base_url}/v1/jobs/{job.id}"}
    return JSONResponse(public.model_dump(mode="json"), status_code=202 if created else 200, headers=headers)


@router.get("/jobs/{job_id}", response_model=JobPublic)
async def get_job(job_id: JobId, services: ServicesDep, base_url: BaseUrlDep, who: PrincipalDep) -> JobPublic:
    """Status, queue position while queued, progress, timings, result URLs, error."""
    return await _public(services, await _owned_job(services, who, job_id), base_url, who)


@router.get("/jobs")
async def list_jobs(
    services: ServicesDep,
    base_url: BaseUrlDep,
    who: PrincipalDep,
    status: JobStatus | None = None,
    since: Since = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: PageCursor = None,
    route: Annotated[str | None, Query(max_length=64, pattern=r"^[A-Za-z0-9_-]+$",
                                       description="Only jobs of `local` or this upstream backend.")] = None,
) -> dict:
    """Your jobs (an admin key: every job), newest first; pass ``next_cursor`` back as ``cursor``."""
    jobs, next_cursor = await asyncio.to_thread(
        services.store.list_jobs, status=status, since=since, limit=limit, cursor=cursor,
        api_key_id=who.list_filter, route=route,
    )
    # The queued jobs' places as the single read shows them: one query for the whole page.
    queued = [job.id for job in jobs if job.status is JobStatus.queued]
    positions = await asyncio.to_thread(services.store.queue_positions, queued) if queued else {}
    data = [job_public(job, base_url=base_url, queue_position=positions.get(job.id), operator=who.is_admin)
            .model_dump(mode="json") for job in jobs]
    return {"object": "list", "data": data, "next_cursor": next_cursor}


@router.post("/jobs/{job_id}/cancel", response_model=JobPublic,
             responses={409: {"description": "The job already succeeded or failed (the error names its state)."}})
async def cancel_job(
    job_id: JobId, services: ServicesDep, base_url: BaseUrlDep, who: PrincipalDep
) -> JobPublic:
    """Cancel: a queued job at once, a running one at its next denoising step.

    A canceled job answers 200 as it is (cancelling twice is harmless); a job that
    already succeeded or failed answers 409 ``conflict`` naming ``job_id`` and its state.
    """
    await _owned_job(services, who, job_id)
    return await _public(services, await services.jobs.cancel(job_id), base_url, who)


@router.get("/jobs/{job_id}/events", response_class=StreamingResponse, responses={200: {"content": {"text/event-stream": {}}}})
async def job_events(
    job_id: JobId, services: ServicesDep, base_url: BaseUrlDep, who: PrincipalDep
) -> StreamingResponse:
    """Server-Sent Events: queued, started, progress, preview (a live image), then succeeded,
    failed or canceled."""
    await _owned_job(services, who, job_id)  # 404 before the stream starts
    return StreamingResponse(
        job_event_stream(services.jobs, job_id, base_url), media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.post("/batches", status_code=202, response_model=BatchPublic)
async def create_batch(body: BatchCreate, services: ServicesDep, who: SubmitterDep) -> BatchPublic:
    """Queue many jobs at once: a list of requests, or one request × prompts × a seed range."""
    _check_webhook(services, body.webhook)
    check_batch_size(body, services.settings)  # arithmetic, before anything is expanded or decoded
    with wire_params(PARAM_NAMES):
        requests = await run_cpu(build_requests, body, services.settings)
        batch_id, jobs = await services.jobs.submit_batch(
            requests, webhook=body.webhook_spec(), priority=body.priority, **who.submit_args()
        )
    counts = await asyncio.to_thread(services.store.batch_counts, batch_id)
    return BatchPublic(id=batch_id, size=len(jobs), counts=counts, job_ids=[job.id for job in jobs])


@router.get("/batches/{batch_id}", response_model=BatchPublic)
async def get_batch(batch_id: BatchId, services: ServicesDep, who: PrincipalDep) -> BatchPublic:
    """How many of the batch's jobs are in each status."""
    await _check_batch_owner(services, who, batch_id)
    counts = await asyncio.to_thread(services.store.batch_counts, batch_id)
    return BatchPublic(id=batch_id, size=sum(counts.values()), counts=counts)


ARCHIVE_COMPLETE_HEADER = "X-Pixelmill-Archive-Complete"


@router.get(
    "/batches/{batch_id}/archive", response_class=StreamingResponse,
    responses={200: {"content": {"application/zip": {}}},
               409: {"description": "Jobs of the batch are still queued or running (counts in the message)."}},
)
async def batch_archive(
    batch_id: BatchId, services: ServicesDep, who: PrincipalDep,
    partial: Annotated[bool, Query(description="Return the images finished so far while jobs still run.")] = False,
) -> StreamingResponse:
    """A ZIP of every finished image of the batch plus ``manifest.json``, streamed image by image.

    While any job is queued or running: 409 with the counts, unless ``partial=true``,
    which returns the images finished so far with ``"complete": false`` in the manifest.
    The ``X-Pixelmill-Archive-Complete`` header says which (``true``/``false``).
    """
    await _check_batch_owner(services, who, batch_id)
    jobs, counts = await asyncio.to_thread(_batch_snapshot, services, batch_id)
    complete = counts[JobStatus.queued.value] + counts[JobStatus.running.value] == 0
    if not complete and not partial:
        summary = ", ".join(f"{count} {status}" for status, count in counts.items())
        raise Conflict(f"batch {batch_id} is not complete ({summary}); wait until no job is queued or running, "
                       "or pass partial=true for the images finished so far", param="partial")
    succeeded = [job for job in jobs if job.status is JobStatus.succeeded]
    return StreamingResponse(
        zip_stream(job_entries(succeeded, services.results),
                   manifest={"batch_id": batch_id, "complete": complete, "counts": counts}),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{batch_id}.zip"',
                 ARCHIVE_COMPLETE_HEADER: "true" if complete else "false"},
    )


def _batch_snapshot(services: Services, batch_id: str) -> tuple[list[JobRecord], dict[str, int]]:
    """The batch's jobs (NotFound for an unknown batch, before streaming) and their counts
    by status, from the same read: the counts describe exactly the jobs archived."""
    jobs = list(services.store.batch_jobs(batch_id))
    counts = {status.value: 0 for status in JobStatus}
    for job in jobs:
        counts[job.status.value] += 1
    return jobs, counts

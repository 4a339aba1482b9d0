"""``POST /v1/generate``: a job plus a wait, as JSON or as a Server-Sent Events stream.

With ``Accept: text/event-stream`` the response streams the job's events (``queued``,
``started``, ``progress``) and ends with ``result`` (the JSON body, images inline) or
``error`` (the error envelope). The CLI's progress bar reads this stream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from pixelmill.api.auth import SubmitterDep, current_principal
from pixelmill.api.deps import BaseUrlDep, ServicesDep
from pixelmill.api.errors import error_body, request_id_of, wire_params
from pixelmill.api.native.events import job_events, sse
from pixelmill.api.native.protocol import PARAM_NAMES, GenerationCreate, GenerationPublic
from pixelmill.api.offload import run_cpu
from pixelmill.api.params import reject_unknown_query
from pixelmill.core.types import JobRecord
from pixelmill.core.errors import PixelmillError
from pixelmill.jobs.service import raise_for_job
from pixelmill.services import Services

router = APIRouter(prefix="/v1", tags=["Native"],
                   dependencies=[Depends(current_principal), Depends(reject_unknown_query)])


async def _public(services: Services, job: JobRecord) -> GenerationPublic:
    images = [await services.read_result(file_id) for file_id in job.result_ids]
    controls = [await services.read_result(file_id) for file_id in job.control_result_ids]
    return GenerationPublic.from_job(job, images, controls)


async def _stream(services: Services, job: JobRecord, base_url: str, request_id: str | None) -> AsyncIterator[bytes]:
    try:
        async for event, data, current in job_events(services.jobs, job.id, base_url):
            if event in ("queued", "started", "progress", "preview"):
                yield sse(event, data)
            elif event:
                raise_for_job(current)
                yield sse("result", (await _public(services, current)).model_dump(mode="json"))
    except PixelmillError as exc:
        yield sse("error", error_body(exc, request_id))


@router.post("/generate", response_model=GenerationPublic, responses={200: {"content": {"text/event-stream": {}}}})
async def generate(
    body: GenerationCreate, http: Request, services: ServicesDep, base_url: BaseUrlDep, who: SubmitterDep
):
    """Generate with every engine parameter and wait; ``Accept: text/event-stream`` streams progress."""
    with wire_params(PARAM_NAMES):
        request = await run_cpu(body.to_request, services.settings)  # decoding: off the loop
        if "text/event-stream" in http.headers.get("accept", ""):
            job, _ = await services.jobs.submit(request, **who.submit_args())
            return StreamingResponse(
                _stream(services, job, base_url, request_id_of(http)), media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        job = await services.jobs.run(request, **who.submit_args())
    return await _public(services, job)

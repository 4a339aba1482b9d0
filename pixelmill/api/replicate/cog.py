"""Cog's local HTTP API (what ``docker run`` of a Cog model answers), under ``/cog``.

Teams that call Cog containers directly keep their code with the base URL changed to
``http://HOST:8000/cog``. Shapes from Cog's ``docs/http.md`` and ``cog/schema.py``:

* ``POST /predictions`` ``{id?, input, webhook?, webhook_events_filter?}``: waits and answers
  200 with the finished prediction; ``Prefer: respond-async``: 202 at once (``starting``).
* ``PUT /predictions/{id}``: the same, idempotent: the same id and input again is the same
  prediction (a pixelmill idempotency key, so durable), a different input with it is a 422.
* ``POST /predictions/{id}/cancel``; ``GET /health-check``; ``GET /`` (links);
  ``GET /openapi.json`` with the ``Input`` and ``Output`` schemas.

Outputs are ``data:`` URIs, as Cog gives them without ``--upload-url`` (webhook bodies carry
the result URLs instead). Inputs are the Replicate dialect's (SDXL and FLUX fields). The
default model runs; every prediction is a pixelmill job like any other. Cog's webhooks
are unsigned; these carry Standard Webhooks signature headers, which receivers may ignore.
"""

from __future__ import annotations

import base64
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Header, Path
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from pixelmill import __version__
from pixelmill.api.auth import PrincipalDep, SubmitterDep, current_principal
from pixelmill.api.deps import BaseUrlDep, ServicesDep
from pixelmill.api.errors import COG_PREFIX, wire_params
from pixelmill.api.params import JOB_ID
from pixelmill.api.recent import RecentMap
from pixelmill.api.replicate.models import OUTPUT_SCHEMA
from pixelmill.api.replicate.protocol import PARAM_NAMES, PredictionCreate, PredictionInput
from pixelmill.api.replicate.router import input_pngs, webhook_spec
from pixelmill.api.system import READY, _worker_status  # the one reading of a worker's state
from pixelmill.auth.keys import Principal
from pixelmill.core.errors import Conflict, InvalidRequest, NotFound, WaitTimeout
from pixelmill.core.types import JobRecord, JobStatus
from pixelmill.jobs.predictions import prediction_view
from pixelmill.services import Services

router = APIRouter(prefix=COG_PREFIX, tags=["Cog"])
NAMES = {**PARAM_NAMES, "Idempotency-Key": "id"}
HEALTH = {READY: "READY", "loading": "STARTING", "degraded": "UNHEALTHY", "failed": "SETUP_FAILED"}
MAX_IDS = 10_000
_ids: RecentMap[tuple[str | None, str], str] = RecentMap(MAX_IDS)
"""(API key, client id) → job id, for cancel by a client's id: kept by this process, as Cog keeps its
predictions in memory (the job id itself works on any host)."""

CogId = Annotated[str, Path(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.-]+$")]
PreferHeader = Annotated[str | None, Header(alias="Prefer")]


class CogPredictionRequest(BaseModel):
    """Body of Cog's ``POST /predictions`` and ``PUT /predictions/{id}``."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(None, max_length=200, pattern=r"^[A-Za-z0-9_.-]+$")
    input: dict = Field(default_factory=dict)
    webhook: str | None = None
    webhook_events_filter: list[Literal["start", "output", "logs", "completed"]] | None = None
    created_at: str | None = None
    context: dict[str, str] | None = Field(None, description="Accepted; the model reads no context.")

    def as_prediction(self) -> PredictionCreate:
        """The same request as a Replicate body (Cog's default filter is every event)."""
        events = self.webhook_events_filter
        return PredictionCreate.model_validate({
            "input": self.input, "webhook": self.webhook,
            "webhook_events_filter": ["start", "output", "logs", "completed"] if events is None else events,
        })


async def _cog_view(services: Services, job: JobRecord, cog_id: str) -> dict:
    """Cog's prediction: outputs as ``data:`` URIs, the client's id."""
    view = prediction_view(job, prediction_id=cog_id)
    output = None
    if job.status is JobStatus.succeeded:
        media = job.request.output_format.media_type
        output = [f"data:{media};base64,{base64.b64encode(await services.read_result(file_id)).decode()}"
                  for file_id in job.result_ids]
    keys = ("input", "logs", "error", "status", "created_at", "started_at", "completed_at", "metrics",
            "version")
    return {"id": view["id"], "output": output, **{key: view[key] for key in keys}}


async def _predict(
    body: CogPredictionRequest, cog_id: str | None, services: Services, base_url: str, who: Principal,
    prefer: str | None,
) -> JSONResponse:
    prediction = body.as_prediction()
    inputs = prediction.parsed_input()
    webhook = webhook_spec(prediction, services, base_url)
    if webhook is not None and cog_id:
        webhook = webhook.model_copy(update={"prediction_id": cog_id})
    image_png, mask_png = await input_pngs(inputs, services, base_url)
    with wire_params(NAMES):
        request = inputs.to_request(model=None, image_png=image_png, mask_png=mask_png,
                                    server_refiner=services.settings.refiner)
        job, _ = await services.jobs.submit(
            request, webhook=webhook, idempotency_key=f"cog:{cog_id}" if cog_id else None,
            **who.submit_args())
    if cog_id:
        _ids.put((who.key_id, cog_id), job.id)
    cog_id = cog_id or job.id
    if prefer is not None and "respond-async" in prefer:
        return JSONResponse(await _cog_view(services, job, cog_id), status_code=202)
    try:
        job = await services.jobs.wait(job.id)
    except WaitTimeout:
        job = await services.jobs.get(job.id)
    status = 200 if job.status.terminal else 202
    return JSONResponse(await _cog_view(services, job, cog_id), status_code=status)


@router.post("/predictions", dependencies=[Depends(current_principal)])
async def create(body: CogPredictionRequest, services: ServicesDep, base_url: BaseUrlDep, who: SubmitterDep,
                 prefer: PreferHeader = None) -> JSONResponse:
    """Run a prediction: 200 with it once finished, or 202 at once with ``Prefer: respond-async``."""
    return await _predict(body, body.id, services, base_url, who, prefer)


@router.put("/predictions/{prediction_id}", dependencies=[Depends(current_principal)])
async def create_idempotent(
    prediction_id: CogId, body: CogPredictionRequest, services: ServicesDep, base_url: BaseUrlDep,
    who: SubmitterDep, prefer: PreferHeader = None,
) -> JSONResponse:
    """Run a prediction under the client's id; the same id and input again is the same prediction."""
    if body.id is not None and body.id != prediction_id:
        raise InvalidRequest(f"the body's id {body.id!r} differs from the path's {prediction_id!r}",
                             param="id")
    return await _predict(body, prediction_id, services, base_url, who, prefer)


@router.post("/predictions/{prediction_id}/cancel", dependencies=[Depends(current_principal)])
async def cancel(prediction_id: CogId, services: ServicesDep, who: PrincipalDep) -> dict:
    """Cancel a prediction by the client's id (or its job id); 404 when unknown."""
    job_id = _ids.get((who.key_id, prediction_id))
    if job_id is None and JOB_ID.fullmatch(prediction_id):
        job_id = prediction_id
    if job_id is None:
        raise NotFound(f"prediction {prediction_id!r} does not exist", param="prediction_id")
    job = await services.jobs.get(job_id)
    if not who.owns(job.api_key_id):
        raise NotFound(f"prediction {prediction_id!r} does not exist", param="prediction_id")
    try:
        job = await services.jobs.cancel(job_id)
    except Conflict:
        pass  # already finished: nothing to stop
    return await _cog_view(services, job, prediction_id)


@router.get("/health-check")
async def health_check(services: ServicesDep) -> dict:
    """Always 200; ``status``: STARTING, READY, BUSY, UNHEALTHY or SETUP_FAILED."""
    statuses = [_worker_status(worker) for worker in services.workers] or [READY]
    best = min(statuses, key=list(HEALTH).index)
    status = HEALTH[best]
    if status == "READY" and services.workers and all(worker.backend.busy for worker in services.workers):
        status = "BUSY"
    setup = "succeeded" if best == READY else "failed" if best == "failed" else "starting"
    return {"status": status, "setup": {"status": setup, "logs": ""}, "version": {"pixelmill": __version__}}


@router.get("/")
async def links() -> dict:
    """Cog's discovery document."""
    return {
        "cog_version": f"pixelmill-{__version__}", "docs_url": "/docs",
        "openapi_url": f"{COG_PREFIX}/openapi.json",
        "healthcheck_url": f"{COG_PREFIX}/health-check", "predictions_url": f"{COG_PREFIX}/predictions",
        "predictions_idempotent_url": f"{COG_PREFIX}/predictions/{{prediction_id}}",
        "predictions_cancel_url": f"{COG_PREFIX}/predictions/{{prediction_id}}/cancel",
    }


@router.get("/openapi.json")
async def openapi() -> dict:
    """The model's schema as Cog publishes it: ``Input`` (the prediction inputs) and ``Output``."""
    status = {"title": "Status", "type": "string",
              "enum": ["starting", "processing", "succeeded", "canceled", "failed"]}
    request = CogPredictionRequest.model_json_schema()
    request["properties"]["input"] = {"$ref": "#/components/schemas/Input"}
    return {
        "openapi": "3.0.2", "info": {"title": "Cog", "version": __version__},
        "paths": {f"{COG_PREFIX}/predictions": {"post": {"summary": "Predict", "requestBody": {"content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/PredictionRequest"}}}}}}},
        "components": {"schemas": {"Input": PredictionInput.model_json_schema(), "Output": OUTPUT_SCHEMA,
                                   "Status": status, "PredictionRequest": request}},
    }


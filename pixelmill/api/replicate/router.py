"""Replicate prediction routes, under ``/replicate/v1`` (see docs/replicate.md).

Thin on purpose: parse the body, fetch and decode the file inputs, translate to a
:class:`GenerationRequest`, submit it as a job through the job service (durable, batched,
in the ledger), and render the job as a prediction (:mod:`pixelmill.jobs.predictions`).
Errors leave through the app's error table in Replicate's problem shape
(:data:`pixelmill.api.errors.REPLICATE_SHAPE`), with internal names renamed to the input's.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Header
from fastapi.responses import JSONResponse

from pixelmill.api.auth import PrincipalDep, SubmitterDep, current_principal
from pixelmill.api.deps import BaseUrlDep, ServicesDep
from pixelmill.api.errors import wire_params
from pixelmill.api.params import JobId, PageCursor
from pixelmill.api.replicate.inputs import input_image
from pixelmill.api.replicate.models import request_model, version_model
from pixelmill.api.replicate.protocol import PARAM_NAMES, PredictionCreate, PredictionInput
from pixelmill.api.uploads import inpaint_pngs, variation_png
from pixelmill.auth.keys import Principal
from pixelmill.core.errors import Conflict, InvalidRequest, NotFound, WaitTimeout
from pixelmill.core.types import JobRecord, WebhookSpec
from pixelmill.jobs.predictions import PREFIX, prediction_view
from pixelmill.outbound.netguard import check_url
from pixelmill.services import Services

router = APIRouter(prefix=f"{PREFIX}/v1", tags=["Replicate predictions"],
                   dependencies=[Depends(current_principal)])

MAX_WAIT_S = 60
"""Longest ``Prefer: wait=N`` honoured, as on Replicate (the client's own default)."""
DEFAULT_WAIT_S = 20
"""How long a create without ``Prefer`` waits: under the official client's 30 s read timeout."""
WAIT_MARGIN_S = 0.2
"""Answer this much before the wait ends, so the response is in before the client stops reading."""
PAGE_SIZE = 100
_PREFER_WAIT = re.compile(r"(?:^|[\s,;])wait(?:\s*=\s*(\d{1,6}))?(?:$|[\s,;])")
_DURATION = re.compile(r"^\s*(\d{1,9}(?:\.\d{1,6})?)\s*(ms|s|m|h)?\s*$")

PreferHeader = Annotated[str | None, Header(
    alias="Prefer", description="wait or wait=N (1-60 s): hold the request until done or N seconds pass.")]
CancelAfterHeader = Annotated[str | None, Header(
    alias="Cancel-After", description="Cancel the prediction if not done after e.g. 30s, 5m.")]


def wait_seconds(prefer: str | None) -> float | None:
    """Seconds ``Prefer`` asks the create call to wait (``wait`` alone: 60), None for none.

    Without the header the call still waits up to :data:`DEFAULT_WAIT_S`, so plain
    ``requests`` code that reads ``output`` from the create response works; ``Prefer:
    respond-async`` answers at once.
    """
    if prefer is None:
        return DEFAULT_WAIT_S
    match = _PREFER_WAIT.search(prefer)
    if match is None:
        return None
    return float(min(MAX_WAIT_S, max(1, int(match[1])))) if match[1] else float(MAX_WAIT_S)


def duration_seconds(text: str) -> float:
    """``Cancel-After``: ``30s``, ``5m``, ``1h``, ``500ms`` or plain seconds."""
    match = _DURATION.fullmatch(text)
    if match is None or float(match[1]) <= 0:
        raise InvalidRequest(f"Cancel-After must be a duration like 30s, 5m or 1h, got {text[:40]!r}",
                             param="Cancel-After")
    return float(match[1]) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[match[2]]


async def _owned(services: Services, who: Principal, job_id: str) -> JobRecord:
    """The prediction's job if ``who`` may see it (another key's is "not found", like a missing one)."""
    job = await services.jobs.get(job_id)
    if not who.owns(job.api_key_id):
        raise NotFound(f"prediction {job_id!r} does not exist", param="job_id")
    return job


def webhook_spec(body: PredictionCreate, services: Services, base_url: str) -> WebhookSpec | None:
    """The prediction webhook the body asks for (URL checked by the guard now), or None."""
    target = body.webhook_target()
    if target is None:
        return None
    url, events = target
    check_url(url, allow_private=services.settings.webhook_allow_private,
              param="webhook" if body.webhook else "webhook_completed")
    return WebhookSpec(url=url, events=events, body="prediction", signing="standard", base_url=base_url)


async def input_pngs(
    body: PredictionInput, services: Services, base_url: str,
) -> tuple[bytes | None, bytes | None]:
    """The ``image`` and ``mask`` inputs as clean PNGs (mask: white = repaint)."""
    image = await input_image(body.image, field="input.image", services=services, base_url=base_url)
    if image is None:
        return None, None
    mask = await input_image(body.mask, field="input.mask", services=services, base_url=base_url)
    if mask is None:
        return await variation_png(image), None
    return await inpaint_pngs(image, mask, "luminance")


async def _create(
    body: PredictionCreate, model: str | None, services: Services, base_url: str, who: Principal,
    prefer: str | None, cancel_after: str | None,
) -> JSONResponse:
    """Submit the prediction as a job; answer 201 + Location, after ``Prefer: wait`` if asked."""
    started = time.monotonic()
    wait = wait_seconds(prefer)
    deadline = duration_seconds(cancel_after) if cancel_after else None
    inputs = body.parsed_input()
    webhook = webhook_spec(body, services, base_url)
    image_png, mask_png = await input_pngs(inputs, services, base_url)
    with wire_params(PARAM_NAMES):
        request = inputs.to_request(model=model, image_png=image_png, mask_png=mask_png,
                                    server_refiner=services.settings.refiner)
        job, _ = await services.jobs.submit(request, webhook=webhook, cancel_after_s=deadline, **who.submit_args())
    status = None
    if wait is not None:
        # The client reads for wait + 0.5 s: the time spent fetching and decoding inputs counts.
        budget = min(wait, services.settings.sync_timeout_s) - (time.monotonic() - started) - WAIT_MARGIN_S
        try:
            job = await services.jobs.wait(job.id, timeout=max(budget, 0.01))
        except WaitTimeout:
            job = await services.jobs.get(job.id)
        if not job.status.terminal and prefer is not None:
            # The official client's run() treats any status but "starting" after a wait as
            # final and would return no output: a prediction still running is "starting" here.
            status = "starting"
    view = prediction_view(job, base_url=base_url, status=status)
    return JSONResponse(view, status_code=201, headers={"Location": view["urls"]["get"]})


@router.post("/predictions", status_code=201)
async def create_prediction(
    body: PredictionCreate, services: ServicesDep, base_url: BaseUrlDep, who: SubmitterDep,
    prefer: PreferHeader = None, cancel_after: CancelAfterHeader = None,
) -> JSONResponse:
    """Create a prediction of ``version`` (an id, or owner/name[:id]) or ``model`` (owner/name)."""
    if body.version and body.model:
        raise InvalidRequest("give version or model, not both", param="version")
    if body.model:
        model = request_model(body.model, services)
    elif body.version:
        model = version_model(body.version, services)
    else:
        raise InvalidRequest("version is required (or model: owner/name)", param="version")
    return await _create(body, model, services, base_url, who, prefer, cancel_after)


@router.post("/models/{owner}/{name}/predictions", status_code=201)
async def create_model_prediction(
    owner: str, name: str, body: PredictionCreate, services: ServicesDep, base_url: BaseUrlDep,
    who: SubmitterDep, prefer: PreferHeader = None, cancel_after: CancelAfterHeader = None,
) -> JSONResponse:
    """Create a prediction of the model ``owner/name`` (``replicate.run("owner/name")``)."""
    model = request_model(f"{owner}/{name}", services)
    return await _create(body, model, services, base_url, who, prefer, cancel_after)


@router.post("/deployments/{owner}/{name}/predictions", status_code=201)
async def create_deployment_prediction(
    owner: str, name: str, body: PredictionCreate, services: ServicesDep, base_url: BaseUrlDep,
    who: SubmitterDep, prefer: PreferHeader = None, cancel_after: CancelAfterHeader = None,
) -> JSONResponse:
    """Create a prediction on the deployment ``owner/name`` (a model name; see GET …/deployments)."""
    model = request_model(f"{owner}/{name}", services, param="deployment")
    return await _create(body, model, services, base_url, who, prefer, cancel_after)


@router.get("/predictions/{job_id}")
async def get_prediction(
    job_id: JobId, services: ServicesDep, base_url: BaseUrlDep, who: PrincipalDep,
) -> dict:
    """The prediction: status, logs with progress, output URLs once succeeded, metrics."""
    return prediction_view(await _owned(services, who, job_id), base_url=base_url)


@router.get("/predictions")
async def list_predictions(
    services: ServicesDep, base_url: BaseUrlDep, who: PrincipalDep, cursor: PageCursor = None,
) -> dict:
    """Your predictions (every job of your key; an admin key: all), newest first, 100 a page."""
    jobs, next_cursor = await asyncio.to_thread(
        services.store.list_jobs, limit=PAGE_SIZE, cursor=cursor, api_key_id=who.list_filter)
    following = f"{base_url}{PREFIX}/v1/predictions?cursor={next_cursor}" if next_cursor else None
    return {"previous": None, "next": following,
            "results": [prediction_view(job, base_url=base_url) for job in jobs]}


@router.post("/predictions/{job_id}/cancel")
async def cancel_prediction(
    job_id: JobId, services: ServicesDep, base_url: BaseUrlDep, who: PrincipalDep,
) -> dict:
    """Cancel: a starting prediction at once, a processing one at its next step; a finished
    one is returned as it is (as on Replicate, cancelling is never an error)."""
    job = await _owned(services, who, job_id)
    try:
        job = await services.jobs.cancel(job_id)
    except Conflict:
        pass  # already succeeded or failed
    return prediction_view(job, base_url=base_url)

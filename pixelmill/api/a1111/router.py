"""A1111 generation and control routes: ``txt2img``, ``img2img``, ``progress``, ``interrupt``,
``skip``, ``options`` and ``/internal/progress``.

Thin: parse the body, translate it (in the CPU pool: it decodes images), run it as the
caller's job through the job service, render A1111's answer. A generation stopped by
``interrupt`` answers 200 with the images it has (none: a job's images come together),
as A1111 does. Mounted at the root: A1111 clients overwrite the URL path.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Body, Depends, Query, Request

from pixelmill.api.a1111.catalog import checkpoint_resolver, current_title
from pixelmill.api.a1111.images import Crop
from pixelmill.api.a1111.protocol import (CHECKPOINT, CLIP_SKIP, PARAM_NAMES, Caller, Img2ImgRequest,
                                          Txt2ImgRequest, clip_skip)
from pixelmill.api.a1111.render import b64, info, infotexts, pasted_back
from pixelmill.api.a1111.state import A1111State, active_jobs, caller_of, internal_progress, progress_body
from pixelmill.api.auth import PrincipalDep, SubmitterDep, current_principal
from pixelmill.api.deps import ServicesDep
from pixelmill.api.errors import wire_params
from pixelmill.api.offload import run_cpu
from pixelmill.auth.keys import Principal
from pixelmill.core.errors import Conflict, InvalidRequest, NotFound
from pixelmill.core.types import GenerationRequest, JobStatus
from pixelmill.jobs.service import raise_for_job
from pixelmill.services import Services

# Errors in A1111's body (api.errors.A1111_SHAPE), documented so in /openapi.json (api.openapi).
router = APIRouter(tags=["AUTOMATIC1111"], dependencies=[Depends(current_principal)])


def get_state(request: Request) -> A1111State:
    """The app's A1111 state (per-caller options, task ids), created on first use."""
    state = getattr(request.app.state, "a1111", None)
    if state is None:
        state = request.app.state.a1111 = A1111State()
    return state


def _caller(services: Services, state: A1111State, who: Principal) -> Caller:
    return Caller(options=state.options(caller_of(who)), checkpoint=checkpoint_resolver(services))


async def _generate(services: Services, state: A1111State, who: Principal,
                    body: Txt2ImgRequest | Img2ImgRequest, request: GenerationRequest,
                    crop: Crop | None) -> dict[str, Any]:
    """Run ``request`` as ``who``'s job and answer A1111's ``{images, parameters, info}``."""
    with wire_params(PARAM_NAMES):
        job, _ = await services.jobs.submit(request, **who.submit_args())
    if body.force_task_id:
        state.remember_task(caller_of(who), body.force_task_id, job.id)
    job = await services.jobs.wait(job.id)
    if job.status is not JobStatus.canceled:  # interrupted: 200 with what it has, as A1111
        with wire_params(PARAM_NAMES):
            raise_for_job(job)
    texts = infotexts(job) if job.status is JobStatus.succeeded else []  # one per image made
    images = []
    if body.send_images is not False:
        for index, file_id in enumerate(job.result_ids):
            data = await services.read_result(file_id)
            if crop is not None:  # "only masked": the box goes back into the whole picture
                data = await run_cpu(pasted_back, data, crop, texts[index])
            images.append(b64(data))
    parameters = body.echo()
    return {"images": images, "parameters": parameters, "info": info(job, parameters, texts=texts)}


@router.post("/sdapi/v1/txt2img")
async def txt2img(body: Txt2ImgRequest, services: ServicesDep, who: SubmitterDep,
                  state: A1111State = Depends(get_state)) -> dict[str, Any]:
    """Generate from a prompt (A1111 ``txt2img``); the connection is held until the images exist."""
    caller = _caller(services, state, who)
    with wire_params(PARAM_NAMES):
        request = await run_cpu(body.to_request, services.settings, caller)
    return await _generate(services, state, who, body, request, None)


@router.post("/sdapi/v1/img2img")
async def img2img(body: Img2ImgRequest, services: ServicesDep, who: SubmitterDep,
                  state: A1111State = Depends(get_state)) -> dict[str, Any]:
    """img2img, or inpaint with a ``mask`` (white = repaint), with A1111's conventions."""
    caller = _caller(services, state, who)
    with wire_params(PARAM_NAMES):
        request, crop = await run_cpu(body.to_request, services.settings, caller)
    return await _generate(services, state, who, body, request, crop)


@router.get("/sdapi/v1/options")
async def get_options(services: ServicesDep, who: PrincipalDep,
                      state: A1111State = Depends(get_state)) -> dict[str, Any]:
    """The caller's options: ``sd_model_checkpoint`` is its default model's title."""
    mine = state.options(caller_of(who))
    return {
        "samples_format": "png", "sd_vae": "Automatic", CLIP_SKIP: 1, "sd_checkpoint_hash": None,
        "eta_noise_seed_delta": 0, "img2img_fix_steps": False,
        **mine,
        CHECKPOINT: mine.get(CHECKPOINT) or current_title(services),
    }


@router.post("/sdapi/v1/options")
async def set_options(services: ServicesDep, who: PrincipalDep, state: A1111State = Depends(get_state),
                      values: dict[str, Any] = Body(...)) -> None:
    """Set the caller's options; ``sd_model_checkpoint`` chooses its default model (nobody else's).

    Open WebUI posts the whole dict back: every key is kept and read back; only
    ``sd_model_checkpoint`` and ``CLIP_stop_at_last_layers`` change generations.
    """
    title = values.get(CHECKPOINT)
    if title is not None:
        if not isinstance(title, str) or not title.strip():
            raise InvalidRequest(f"{CHECKPOINT} must be a model title from /sdapi/v1/sd-models",
                                 param=CHECKPOINT)
        await asyncio.to_thread(checkpoint_resolver(services), title, CHECKPOINT)  # unknown: 404 naming it
    clip_skip(values.get(CLIP_SKIP), CLIP_SKIP)  # refused here rather than at the next generation
    state.set_options(caller_of(who), values)
    return None


@router.get("/sdapi/v1/progress")
async def progress(services: ServicesDep, who: PrincipalDep,
                   skip_current_image: bool = Query(False)) -> dict[str, Any]:
    """Progress of the caller's jobs (idle: ``progress`` 0 and ``state.job_count`` 0)."""
    running, queued = await active_jobs(services.store, who)
    body = progress_body(running, queued)
    if running and not skip_current_image:  # the running job's latest live preview, if any
        preview = await services.jobs.latest_preview(running[0].id)
        body["current_image"] = b64(preview) if preview else None
    return body


async def _stop_running(services: Services, who: Principal) -> int:
    """Cancel the caller's running jobs (A1111 stops the current generation); how many."""
    running, _ = await active_jobs(services.store, who)
    for job in running:
        try:
            await services.jobs.cancel(job.id)
        except (NotFound, Conflict):  # finished meanwhile: nothing left to stop
            continue
    return len(running)


@router.post("/sdapi/v1/interrupt")
async def interrupt(services: ServicesDep, who: PrincipalDep) -> dict[str, Any]:
    """Stop the caller's running generations; their ``txt2img``/``img2img`` calls answer 200."""
    await _stop_running(services, who)
    return {}


@router.post("/sdapi/v1/skip")
async def skip(services: ServicesDep, who: PrincipalDep) -> None:
    """A1111 skips the current image of a batch; pixelmill makes a job's images together, so
    skipping stops the caller's running generations, like ``interrupt``."""
    await _stop_running(services, who)
    return None


@router.post("/internal/progress")
async def task_progress(services: ServicesDep, who: PrincipalDep, state: A1111State = Depends(get_state),
                        body: dict[str, Any] = Body(...)) -> dict[str, Any]:
    """Progress of the request the caller sent with ``force_task_id`` = ``id_task``."""
    task_id = body.get("id_task")
    if not isinstance(task_id, str) or not task_id:
        raise InvalidRequest("id_task is required (the force_task_id of a txt2img/img2img call)",
                             param="id_task")
    preview = body.get("id_live_preview")
    preview = preview if isinstance(preview, int) and not isinstance(preview, bool) else -1
    job_id = state.job_of_task(caller_of(who), task_id)
    job = await services.jobs.get(job_id) if job_id else None
    body = internal_progress(job, preview)
    if job is not None and job.status is JobStatus.running:
        live = await services.jobs.preview(job.id)
        if live is not None and live.step != preview:  # the client already has this one otherwise
            body |= {"live_preview": live.data_url(), "id_live_preview": live.step}
    return body

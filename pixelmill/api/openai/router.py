"""OpenAI Images routes: ``/v1/images/*`` and ``/v1/models``.

Thin on purpose: parse the wire model, translate to a :class:`GenerationRequest`,
call the generation service, render OpenAI's response. Errors leave through the
app's one error table, with internal parameter names renamed to OpenAI's.
"""

from __future__ import annotations

import json
import time

from fastapi import APIRouter, Depends, Request, Response
from pydantic import ValidationError

from pixelmill.api.auth import SubmitterDep, current_principal
from pixelmill.api.deps import BaseUrlDep, ServicesDep
from pixelmill.api.errors import wire_params
from pixelmill.api.openai.protocol import (
    IGNORED_FIELDS_HEADER,
    PARAM_NAMES,
    ImageEditForm,
    ImageGenerationCreate,
    ImagesResponse,
    ImageVariationForm,
    parse_size,
    render_response,
)
from pixelmill.api.offload import run_cpu
from pixelmill.api.uploads import form_fields, inpaint_pngs, read_image, variation_png
from pixelmill.auth.keys import Principal
from pixelmill.core.types import GenerationRequest
from pixelmill.core.errors import InvalidRequest
from pixelmill.jobs.views import file_url
from pixelmill.registry.models_dir import ModelKind
from pixelmill.services import Services

router = APIRouter(prefix="/v1", tags=["OpenAI Images"], dependencies=[Depends(current_principal)])


def _multipart_body(model: type) -> dict:
    """OpenAPI description of a multipart body: the form model plus its files."""
    schema = model.model_json_schema()
    schema["properties"] |= {
        "image": {"type": "string", "format": "binary"},
        "mask": {"type": "string", "format": "binary"},
    }
    schema["required"] = [*schema.get("required", []), "image"]
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


def _say_ignored(body, response: Response) -> None:
    """Name the fields the body had that this server ignored (so a typo is visible).

    The names are the client's own text: JSON-escaped to printable ASCII (a header holds
    nothing else, and a CR/LF must never split it) and capped in number and length.
    """
    if ignored := body.ignored_fields():
        names = [json.dumps(name)[1:-1][:64] for name in ignored[:20]]
        response.headers[IGNORED_FIELDS_HEADER] = ", ".join(names) + (", ..." if len(ignored) > 20 else "")


async def _respond(
    services: Services, request: GenerationRequest, response_format: str | None, base_url: str, who: Principal
) -> ImagesResponse:
    """Run the request as ``who``'s job, wait, and answer in OpenAI's shape."""
    with wire_params(PARAM_NAMES):
        job = await services.jobs.run(request, **who.submit_args())
    if response_format == "url":
        return render_response(job, urls=[file_url(base_url, file_id) for file_id in job.result_ids],
                               control_urls=[file_url(base_url, file_id) for file_id in job.control_result_ids])
    return render_response(job, images=[await services.read_result(file_id) for file_id in job.result_ids],
                           control_images=[await services.read_result(file_id) for file_id in job.control_result_ids])


def _parse_form(model: type, fields: dict):
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise InvalidRequest(f"{param}: {first['msg']}", param=param) from None


async def _read_form(http: Request, model: type, services: Services):
    """The multipart form, its fields parsed as ``model``, and the decoded ``image`` upload."""
    form = await http.form()
    body = _parse_form(model, form_fields(form))
    return form, body, await read_image(form, "image", services.settings)


@router.post("/images/generations", response_model=ImagesResponse, response_model_exclude_none=True)
async def create_image(
    body: ImageGenerationCreate, services: ServicesDep, base_url: BaseUrlDep, who: SubmitterDep, response: Response
) -> ImagesResponse:
    """Generate images from a prompt (OpenAI ``images.generate``)."""
    _say_ignored(body, response)
    with wire_params(PARAM_NAMES):
        request = await run_cpu(body.to_request, services.settings)  # control images: decoded off the loop
    return await _respond(services, request, body.response_format, base_url, who)


@router.post(
    "/images/edits", response_model=ImagesResponse, response_model_exclude_none=True,
    openapi_extra=_multipart_body(ImageEditForm),
)
async def edit_image(
    http: Request, services: ServicesDep, base_url: BaseUrlDep, who: SubmitterDep, response: Response
) -> ImagesResponse:
    """Repaint the masked area of an image (OpenAI ``images.edit``: alpha 0 = edit)."""
    form, body, upload = await _read_form(http, ImageEditForm, services)
    _say_ignored(body, response)
    mask_upload = await read_image(form, "mask", services.settings, required=False)
    # The requested size says whether this is an outpaint (a border to generate around the image).
    image_png, mask_png = await inpaint_pngs(upload, mask_upload, body.mask_mode, parse_size(body.size))
    with wire_params(PARAM_NAMES):
        # Without ``size`` the request policy sizes the job from the image (fitted to the limits).
        request = body.to_request(services.settings, image_png, mask_png)
    return await _respond(services, request, body.response_format, base_url, who)


@router.post(
    "/images/variations", response_model=ImagesResponse, response_model_exclude_none=True,
    openapi_extra=_multipart_body(ImageVariationForm),
)
async def create_variation(
    http: Request, services: ServicesDep, base_url: BaseUrlDep, who: SubmitterDep, response: Response
) -> ImagesResponse:
    """Variations of an image (OpenAI ``images.create_variation``), made with img2img."""
    _, body, image = await _read_form(http, ImageVariationForm, services)
    _say_ignored(body, response)
    with wire_params(PARAM_NAMES):
        request = body.to_request(services.settings, await variation_png(image))
    return await _respond(services, request, body.response_format, base_url, who)


@router.get("/models")
async def list_models(services: ServicesDep) -> dict:
    """Models this server can serve, in OpenAI's list shape.

    Each entry adds pixelmill's ``kind`` (``checkpoint`` or ``refiner``) and ``size_bytes``
    (None for a model that is not in the models directory, e.g. a hub id).
    """
    entries = {entry.name: entry for entry in services.registry.list(ModelKind.checkpoint)}
    names = list(entries)
    info = services.backend.info if services.backend is not None else None
    if info is not None:  # None while the model is still loading: list what is on disk
        names = [info.model, *(n for n in names if n != info.model)]
    created = int(time.time())
    return {
        "object": "list",
        "data": [
            {
                "id": name, "object": "model", "created": created, "owned_by": "pixelmill",
                "kind": entries[name].listed_kind if name in entries else "checkpoint",
                "size_bytes": entries[name].size_bytes if name in entries else None,
            }
            for name in names
        ],
    }

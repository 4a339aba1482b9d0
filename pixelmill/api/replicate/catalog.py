"""Replicate's other routes the official client calls: models, versions, deployments,
files and the webhook signing secret, under ``/replicate/v1``.

Files: an upload is an input image, decoded with the upload limits and kept in the result
store as PNG for ``--result-retention-s`` (``expires_at``); its ``urls.get`` is what a
prediction's ``image``/``mask`` input names. ``metadata`` is echoed on create but not
kept, and only images are accepted: nothing else can be an input here.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from datetime import datetime, timedelta, timezone

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile

from pixelmill.api.auth import AdminDep, current_principal
from pixelmill.api.deps import BaseUrlDep, ServicesDep
from pixelmill.api.offload import run_cpu
from pixelmill.api.params import FileId
from pixelmill.api.replicate.models import (
    check_model, check_version, deployment_object, model_object, request_model, version_object,
)
from pixelmill.core.errors import InvalidRequest
from pixelmill.images.codecs import decode_upload, reencode_png
from pixelmill.jobs.predictions import PREFIX, timestamp
from pixelmill.outbound.webhooks import standard_secret

router = APIRouter(prefix=f"{PREFIX}/v1", tags=["Replicate predictions"],
                   dependencies=[Depends(current_principal)])
MAX_METADATA_CHARS = 10_000


@router.get("/models/{owner}/{name}")
async def get_model(owner: str, name: str, services: ServicesDep, base_url: BaseUrlDep) -> dict:
    """The model ``owner/name`` (an alias, ``pixelmill/<checkpoint>`` or ``pixelmill/default``)."""
    return model_object(check_model(owner, name, services), base_url)


@router.get("/models/{owner}/{name}/versions")
async def list_versions(owner: str, name: str, services: ServicesDep) -> dict:
    """The model's versions: one, the model as this server runs it."""
    return {"previous": None, "next": None, "results": [version_object(check_model(owner, name, services))]}


@router.get("/models/{owner}/{name}/versions/{version}")
async def get_version(owner: str, name: str, version: str, services: ServicesDep) -> dict:
    """A version with its OpenAPI ``Input``/``Output`` schemas (``run("owner/name:id")`` reads it)."""
    return check_version(owner, name, version, services)


@router.get("/deployments/{owner}/{name}")
async def get_deployment(owner: str, name: str, services: ServicesDep) -> dict:
    """A deployment: any model name this server serves, on its own workers."""
    request_model(f"{owner}/{name}", services, param="deployment")
    return deployment_object(f"{owner}/{name}", services)


def _file_object(file_id: str, data: bytes, base_url: str, *, name: str | None = None,
                 metadata: dict | None = None, expires_at: datetime | None = None) -> dict:
    sha256 = hashlib.sha256(data).hexdigest()
    return {
        "id": file_id, "name": name or f"{file_id}.png", "content_type": "image/png", "size": len(data),
        "etag": f'"{sha256}"', "checksums": {"sha256": sha256, "md5": hashlib.md5(data).hexdigest()},
        "metadata": metadata or {}, "created_at": timestamp(datetime.now(timezone.utc)),
        "expires_at": timestamp(expires_at), "urls": {"get": f"{base_url}{PREFIX}/v1/files/{file_id}"},
    }


def _metadata(text: str | None) -> dict:
    if not text:
        return {}
    value = None
    if len(text) <= MAX_METADATA_CHARS:
        try:
            value = json.loads(text)
        except ValueError:
            pass  # refused below, naming the field
    if not isinstance(value, dict):
        raise InvalidRequest(f"metadata must be a JSON object of at most {MAX_METADATA_CHARS} characters",
                             param="metadata")
    return value


@router.post("/files", status_code=201)
async def create_file(http: Request, services: ServicesDep, base_url: BaseUrlDep) -> JSONResponse:
    """Upload an input image (multipart ``content`` and optional JSON ``metadata``)."""
    form = await http.form()
    upload = form.get("content")
    if not isinstance(upload, UploadFile):
        raise InvalidRequest("content is required: upload the file as multipart field 'content'",
                             param="content")
    metadata = _metadata(form.get("metadata") if isinstance(form.get("metadata"), str) else None)
    data = await upload.read()
    settings = services.settings
    image = await run_cpu(decode_upload, data, param="content", max_pixels=settings.max_upload_pixels)
    png = await run_cpu(reencode_png, image)
    [file_id] = await asyncio.to_thread(services.results.put_many, [(png, "image/png")])
    expires = datetime.now(timezone.utc) + timedelta(seconds=settings.result_retention_s)
    body = _file_object(file_id, png, base_url, name=upload.filename, metadata=metadata, expires_at=expires)
    return JSONResponse(body, status_code=201)


@router.get("/files/{file_id}")
async def get_file(file_id: FileId, services: ServicesDep, base_url: BaseUrlDep) -> dict:
    """An uploaded file's description (its name and metadata are not kept: id-based)."""
    return _file_object(file_id, await services.read_result(file_id), base_url)


@router.get("/files/{file_id}/download", response_class=Response,
            responses={200: {"content": {"image/png": {}}}})
async def download_file(file_id: FileId, services: ServicesDep) -> Response:
    """The uploaded file's bytes."""
    stored = await asyncio.to_thread(services.results.get, file_id)
    return Response(await services.read_result(file_id), media_type=stored.media_type)


@router.get("/webhooks/default/secret")
async def webhook_secret(services: ServicesDep, who: AdminDep) -> dict:
    """The key that signs prediction webhooks (``whsec_…``, for ``replicate.webhooks.validate``).

    One key signs every webhook of this server, so only an admin key may read it.
    """
    sender = services.events.sender
    if sender is None:
        raise InvalidRequest("this server sends no webhooks", param="webhook")
    return {"key": standard_secret(sender.secret)}

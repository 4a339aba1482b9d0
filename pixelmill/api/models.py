"""The models directory over HTTP: list LoRAs and ControlNets, re-scan, upload a LoRA.

``GET /v1/loras`` and ``GET /v1/controlnets`` list what is on disk (checkpoints are in
OpenAI's ``GET /v1/models``). ``POST /v1/models/refresh`` re-scans the directory and
``POST /v1/loras`` stores an uploaded LoRA after checking it fits a base checkpoint;
both need an admin key. LoRA details come from safetensors headers (never the tensors);
a file in ``loras/`` that is not a usable LoRA is listed with ``valid: false`` and the
reason in ``error`` (requests naming it are refused by the registry, 400), and an upload
whose header cannot be parsed is 400 naming ``file``.
"""

from __future__ import annotations

import asyncio
from typing import Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field
from starlette.datastructures import UploadFile

from pixelmill.api.auth import current_principal, require_admin
from pixelmill.api.deps import ServicesDep
from pixelmill.core.errors import InvalidRequest, PayloadTooLarge
from pixelmill.registry.lora_check import check_fits, compatible_bases, inspect_lora
from pixelmill.registry.models_dir import PICKLE_SUFFIXES, ModelEntry, ModelKind, ModelRegistry
from pixelmill.services import Services

router = APIRouter(prefix="/v1", tags=["Models"], dependencies=[Depends(current_principal)])


class ModelFilePublic(BaseModel):
    """One model in the models directory."""

    id: str = Field(description="The name requests use.")
    object: Literal["model"] = "model"
    name: str
    kind: str = Field(description="checkpoint, refiner, lora, controlnet or vae.")
    size_bytes: int
    single_file: bool = Field(description="A single .safetensors file (else a diffusers folder).")

    @classmethod
    def of(cls, entry: ModelEntry) -> ModelFilePublic:
        return cls(id=entry.name, name=entry.name, kind=entry.listed_kind,
                   size_bytes=entry.size_bytes, single_file=entry.single_file)


class LoraPublic(ModelFilePublic):
    """A LoRA, with what its header says and the checkpoints it fits."""

    format: Literal["peft", "diffusers", "kohya", "bfl"] | None = Field(None, description="None: unreadable.")
    family: str | None = Field(None, description="sdxl, flux or sd3 as its tensor names say; None: unreadable "
                                                 "or the names fit more than one (see compatible_with).")
    rank: int | None = Field(None, description="Largest rank of its down/up pairs.")
    targets: int = Field(0, description="How many modules it adapts.")
    components: list[str] = Field(default_factory=list, description="unet, text_encoder, text_encoder_2.")
    compatible_with: list[str] = Field(default_factory=list, description="Checkpoints it fits.")
    valid: bool = Field(True, description="False: the file is not a usable LoRA (see error); requests "
                                          "naming it are refused.")
    error: str | None = Field(None, description="Why the file is not a usable LoRA, if it is not.")

    @classmethod
    def describe(cls, entry: ModelEntry, registry: ModelRegistry) -> LoraPublic:
        """Blocking (reads headers, cached by file mtime and size)."""
        public = cls(**ModelFilePublic.of(entry).model_dump())
        try:
            info = inspect_lora(entry.path)
        except (InvalidRequest, OSError) as exc:
            # A broken file is listed, not fatal to the listing: the operator sees why.
            return public.model_copy(update={"valid": False,
                                             "error": getattr(exc, "message", "unreadable file")})
        return public.model_copy(update={
            "format": info.format, "family": info.family, "rank": info.rank, "targets": len(info.targets),
            "components": list(info.components), "compatible_with": compatible_bases(entry.path, registry),
        })


class LoraList(BaseModel):
    """LoRAs in ``loras/``, by name."""

    object: Literal["list"] = "list"
    data: list[LoraPublic]


class ModelFileList(BaseModel):
    """Models of one kind, by name."""

    object: Literal["list"] = "list"
    data: list[ModelFilePublic]


class RefreshPublic(BaseModel):
    """The result of a re-scan: how many models of each kind are now listed."""

    object: Literal["models.refresh"] = "models.refresh"
    counts: dict[str, int]


def _list_loras(registry: ModelRegistry) -> LoraList:
    return LoraList(data=[LoraPublic.describe(e, registry) for e in registry.list(ModelKind.lora)])


@router.get("/loras", response_model=LoraList)
async def list_loras(services: ServicesDep) -> LoraList:
    """LoRAs with format, rank, adapted components and the checkpoints each fits."""
    return await asyncio.to_thread(_list_loras, services.registry)


@router.get("/controlnets", response_model=ModelFileList)
async def list_controlnets(services: ServicesDep) -> ModelFileList:
    """ControlNets in ``controlnets/``."""
    return ModelFileList(data=[ModelFilePublic.of(e) for e in services.registry.list(ModelKind.controlnet)])


@router.post("/models/refresh", response_model=RefreshPublic, dependencies=[Depends(require_admin)])
async def refresh_models(services: ServicesDep) -> RefreshPublic:
    """Re-scan the models directory (admin); new files become usable at once."""
    await asyncio.to_thread(services.registry.refresh)
    return RefreshPublic(counts=services.registry.counts())


_UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file", "name"],
    "properties": {
        "file": {"type": "string", "format": "binary", "description": "The LoRA, .safetensors."},
        "name": {"type": "string", "description": "Name to store it under (letters, digits, . _ -)."},
        "base": {"type": "string", "description": "Checkpoint it must fit; default: the server's model."},
        "overwrite": {"type": "boolean", "default": False},
    },
}}}}}


@router.post("/loras", status_code=201, response_model=LoraPublic, openapi_extra=_UPLOAD_BODY,
             dependencies=[Depends(require_admin)])
async def upload_lora(http: Request, services: ServicesDep) -> LoraPublic:
    """Store an uploaded LoRA (admin) once its tensors are checked against a base checkpoint."""
    form = await http.form()
    name, overwrite = _text(form, "name", required=True), _flag(_text(form, "overwrite"))
    base = _base_for(services, _text(form, "base"))
    data = await _read_lora_upload(form, services.settings.max_multipart_bytes)

    def store() -> LoraPublic:
        entry = services.registry.store_lora(
            name, data, overwrite=overwrite, check=lambda path: check_fits(inspect_lora(path), base))
        return LoraPublic.describe(entry, services.registry)

    return await asyncio.to_thread(store)


def _text(form, field: str, *, required: bool = False) -> str | None:
    value = form.get(field)
    if value is None and required:
        raise InvalidRequest(f"{field} is required", param=field)
    if value is not None and not isinstance(value, str):
        raise InvalidRequest(f"{field} must be a text field, not a file", param=field)
    return value


def _flag(value: str | None) -> bool:
    if value is None or value.lower() in ("false", "0", ""):
        return False
    if value.lower() in ("true", "1"):
        return True
    raise InvalidRequest("overwrite must be true or false", param="overwrite")


async def _read_lora_upload(form, limit: int) -> bytes:
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise InvalidRequest("file is required: upload a LoRA .safetensors file", param="file")
    suffix = "." + (upload.filename or "").rsplit(".", 1)[-1].lower()
    if suffix in PICKLE_SUFFIXES:
        raise InvalidRequest(f"pickle files ({suffix}) are never loaded; convert the LoRA to .safetensors",
                             param="file")
    data = await upload.read(limit + 1)  # the body limit already applies; this guards a raised one
    if len(data) > limit:
        raise PayloadTooLarge(f"file exceeds the upload limit of {limit:,} bytes", param="file")
    return data


def _base_for(services: Services, base: str | None) -> ModelEntry:
    """The checkpoint an upload must fit: ``base``, else the server's default model."""
    registry = services.registry
    if base:
        return registry.resolve(ModelKind.checkpoint, base, param="base")
    candidates = [services.settings.model]
    info = services.backend.info if services.backend is not None else None
    if info is not None:  # None while the model is still loading
        candidates.append(info.model)
    for name in candidates:
        entry = registry.find(ModelKind.checkpoint, name) if name else None
        if entry is not None:
            return entry
    raise InvalidRequest("the default model is not a checkpoint in the models directory; "
                         "name the checkpoint the LoRA must fit in the base field", param="base")

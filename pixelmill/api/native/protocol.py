"""Wire models of the native dialect and their translation to :class:`GenerationRequest`.

They translate only: a field the body leaves out stays unset (None) and the request
policy (:mod:`pixelmill.core.policy`) fills it from the server's settings; a value the
body gives (``steps: 0`` included) reaches the policy as given. Numbers are strict
(``n: true`` is refused, not read as 1); the limits in the schema are the default ones,
documented only: the policy enforces the server's own.
"""

from __future__ import annotations

import base64
import binascii

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from pixelmill.api.adapters_wire import AdapterFields, WireFloat, WireInt, documented
from pixelmill.core.types import (RANDOM_SEED, SEED_SPACE, GenerationRequest, JobRecord, Mode, OutputFormat,
                                  WebhookSpec)
from pixelmill.images.codecs import decode_upload, reencode_png
from pixelmill.images.masks import prepare_inpaint
from pixelmill.core.errors import InvalidRequest
from pixelmill.settings import Settings

PARAM_NAMES = {"init_image": "image", "mask_image": "mask", "output_quality": "output_quality"}


def decode_base64_image(value: str, *, param: str, settings: Settings):
    """Decode a base64 string or ``data:image/...;base64,`` URL into a checked image."""
    payload = value.split(",", 1)[1] if value.startswith("data:") else value
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"{param} is not valid base64 or a base64 data URL", param=param) from None
    return decode_upload(data, param=param, max_pixels=settings.max_upload_pixels)


class GenerationCreate(AdapterFields):
    """Body of ``POST /v1/generate``: all engine parameters, images as base64 or data URLs."""

    model_config = ConfigDict(extra="forbid")

    mode: Mode = Mode.txt2img
    prompt: str = Field(description="Must not be empty for txt2img.",
                        json_schema_extra=documented(max_length="max_prompt_chars"))
    negative_prompt: str = Field("", json_schema_extra=documented(max_length="max_prompt_chars"))
    model: str | None = None
    width: WireInt | None = Field(None, json_schema_extra=documented("min_side", "max_side"),
                                  description="A multiple of 8. Default: the input image's size fitted to "
                                  "the limits (img2img, inpaint), else the model's native size.")
    height: WireInt | None = Field(None, json_schema_extra=documented("min_side", "max_side"),
                                   description="A multiple of 8; give both width and height, or neither.")
    steps: WireInt | None = Field(None, description="Default: the server's default_steps.",
                                  json_schema_extra=documented(1, "max_steps"))
    guidance: WireFloat | None = Field(None, description="Default: the server's default_guidance.",
                                       json_schema_extra=documented(0, "max_guidance"))
    seed: WireInt = Field(RANDOM_SEED, description="-1 = random; image i uses seed + i.",
                          json_schema_extra=documented(RANDOM_SEED, SEED_SPACE - 1))
    n: WireInt = Field(1, json_schema_extra=documented(1, "max_n"))
    scheduler: str | None = None
    strength: WireFloat | None = Field(None, json_schema_extra=documented(0, 1),
                                       description="img2img/inpaint: how much of the image is re-noised. "
                                       "Default: the server's default_strength.")
    clip_skip: WireInt | None = Field(None, json_schema_extra=documented(1, 12))
    image: str | None = Field(None, description="Input image (img2img, inpaint), base64 or data URL.")
    mask: str | None = Field(None, description="Inpaint mask, white = repaint, base64 or data URL.")
    mask_blur: WireInt | None = Field(None, description="Default: the server's default_mask_blur.",
                                      json_schema_extra=documented(0, 64))
    output_format: OutputFormat = OutputFormat.png
    output_quality: WireInt | None = Field(None, json_schema_extra=documented(1, 100))

    def to_request(self, settings: Settings) -> GenerationRequest:
        """The request this body asks for (``settings``: limits on decoded images)."""
        fields = self.model_dump(exclude={"image", "mask", *AdapterFields.model_fields})
        fields |= self.adapter_fields(settings)
        if self.image is not None:
            image = decode_base64_image(self.image, param="image", settings=settings)
            fields["init_image"] = reencode_png(image.convert("RGB"))
            if self.mask is not None:
                mask = decode_base64_image(self.mask, param="mask", settings=settings)
                _, binary = prepare_inpaint(image, mask, mask_mode="luminance")
                fields["mask_image"] = reencode_png(binary)
        return GenerationRequest(**fields)


class ImagePublic(BaseModel):
    """One generated image, base64-encoded."""

    b64_json: str
    media_type: str
    seed: int
    width: int
    height: int


class GenerationPublic(BaseModel):
    """Result of ``POST /v1/generate``: the images inline, plus the job that made them."""

    job_id: str
    images: list[ImagePublic]
    control_images: list[ImagePublic] = Field([], description="Preprocessed control images, if asked for.")
    seed: int
    model: str | None
    width: int | None
    height: int | None
    steps: int
    sampler: str | None
    gpu_seconds: float | None

    @classmethod
    def from_job(cls, job: JobRecord, images: list[bytes], control_images: list[bytes] = ()) -> "GenerationPublic":
        media_type = job.request.output_format.media_type
        controls = [
            ImagePublic(b64_json=base64.b64encode(data).decode(), media_type="image/png", seed=0,
                        width=job.width or 0, height=job.height or 0)
            for data in control_images
        ]
        items = [
            ImagePublic(
                b64_json=base64.b64encode(data).decode(), media_type=media_type,
                seed=seed, width=job.width or 0, height=job.height or 0,
            )
            for data, seed in zip(images, job.result_seeds)
        ]
        return cls(
            job_id=job.id, images=items, control_images=controls, seed=job.result_seeds[0] if job.result_seeds else job.request.seed,
            model=job.model, width=job.width, height=job.height, steps=job.steps,
            sampler=job.sampler, gpu_seconds=job.gpu_seconds,
        )


WebhookEvent = Literal["started", "progress", "completed"]


class JobCreate(GenerationCreate):
    """Body of ``POST /v1/jobs``: a generation plus optional webhook and priority."""

    webhook: str | None = Field(None, description="URL that receives signed job events.")
    webhook_events: list[WebhookEvent] = Field(["completed"], description="Events to send.")
    priority: WireInt = Field(0, ge=-10, le=10, description="Higher runs first; ties run oldest first.")

    def webhook_spec(self) -> WebhookSpec | None:
        if self.webhook is None:
            return None
        return WebhookSpec(url=self.webhook, events=tuple(dict.fromkeys(self.webhook_events)))

    def generation(self) -> GenerationCreate:
        return GenerationCreate(**self.model_dump(exclude={"webhook", "webhook_events", "priority"}))


class SeedRange(BaseModel):
    """``count`` consecutive seeds starting at ``start``."""

    model_config = ConfigDict(extra="forbid")

    start: WireInt = Field(0, ge=0)
    count: WireInt = Field(1, ge=1, le=1000)


class BatchCreate(BaseModel):
    """Body of ``POST /v1/batches``: a list of requests, or one request × prompts × seeds."""

    model_config = ConfigDict(extra="forbid")

    requests: list[GenerationCreate] | None = Field(None, max_length=1000)
    request: GenerationCreate | None = Field(None, description="Template for prompts × seeds.")
    prompts: list[str] | None = Field(None, max_length=1000)
    seeds: SeedRange | None = None
    webhook: str | None = None
    webhook_events: list[WebhookEvent] = ["completed"]
    priority: WireInt = Field(0, ge=-10, le=10)

    def expand(self) -> list[GenerationCreate]:
        """Every generation of the batch, in order (prompt-major, then seed)."""
        if self.requests is not None:
            if self.request is not None or self.prompts is not None or self.seeds is not None:
                raise InvalidRequest("give either requests, or request with prompts/seeds", param="requests")
            return self.requests
        if self.request is None:
            raise InvalidRequest("give requests, or a request with prompts and/or seeds", param="request")
        prompts = self.prompts or [self.request.prompt]
        seeds = range(self.seeds.start, self.seeds.start + self.seeds.count) if self.seeds else [self.request.seed]
        items = [self.request.model_copy(update={"prompt": p, "seed": s}) for p in prompts for s in seeds]
        if len(items) > 1000:
            raise InvalidRequest(f"a batch holds at most 1000 jobs, this one {len(items)}", param="seeds")
        return items

    def webhook_spec(self) -> WebhookSpec | None:
        return None if self.webhook is None else WebhookSpec(url=self.webhook, events=tuple(self.webhook_events))


class BatchPublic(BaseModel):
    """A batch: its jobs' ids and how many are in each status."""

    id: str
    object: str = "batch"
    size: int
    counts: dict[str, int]
    job_ids: list[str] | None = None

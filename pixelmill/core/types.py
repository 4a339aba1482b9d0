"""The internal types every layer shares: one request type in, one result type out.

Plain pydantic models, no framework imports. Dialects (OpenAI, native, …) translate
their wire models into :class:`GenerationRequest`; the engine consumes it; results come
back as :class:`JobResult`. Images inside a request are already decoded, size-checked
and re-encoded as PNG bytes by the dialect, so the engine never sees a raw upload.
"""

from __future__ import annotations

import enum
import secrets
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

RANDOM_SEED = -1
"""Seed value meaning "pick one at random" (A1111 convention); the used seed is returned."""
SEED_SPACE = 2**32
"""Seeds are 32-bit like A1111's; image ``i`` of a request uses ``(seed + i) % SEED_SPACE``."""


def resolve_seed(seed: int) -> int:
    """The seed to use: the given one, or a fresh random one for :data:`RANDOM_SEED`."""
    return secrets.randbelow(SEED_SPACE) if seed == RANDOM_SEED else seed


class Mode(str, enum.Enum):
    """What kind of generation a request asks for."""

    txt2img = "txt2img"
    img2img = "img2img"
    inpaint = "inpaint"


class OutputFormat(str, enum.Enum):
    """Encoded image formats the server can return."""

    png = "png"
    jpeg = "jpeg"
    webp = "webp"

    @property
    def media_type(self) -> str:
        return f"image/{self.value}"


class JobStatus(str, enum.Enum):
    """Life cycle of a job; the last three are terminal and never change."""

    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    canceled = "canceled"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.succeeded, JobStatus.failed, JobStatus.canceled)


class LoraSpec(BaseModel):
    """One LoRA adapter applied to a request, by registry name, with a blend weight."""

    model_config = ConfigDict(frozen=True)

    name: str
    weight: float = 1.0


class Preprocess(str, enum.Enum):
    """Built-in control-image preprocessors: pass through, Canny edge map, colour inversion."""

    none = "none"
    canny = "canny"
    invert = "invert"


class ControlSpec(BaseModel):
    """One ControlNet applied to a request: registry name, control image (PNG bytes), schedule.

    ``scale`` multiplies the ControlNet's residuals (0 = no effect); ``start``/``end`` are
    the fractions of the denoising steps during which it is applied.
    """

    model_config = ConfigDict(frozen=True, ser_json_bytes="base64", val_json_bytes="base64")

    name: str
    image: bytes
    scale: float = 1.0
    start: float = 0.0
    end: float = 1.0
    preprocess: Preprocess = Preprocess.none


class RefinerSpec(BaseModel):
    """A refiner pass: registry name of the refiner checkpoint and the hand-off point.

    The base model denoises the first ``switch_at`` fraction of the steps and the refiner
    the rest (ensemble of experts: ``denoising_end`` / ``denoising_start``). None is unset:
    the request policy fills it from the server's ``refiner_switch_at`` (the one default),
    so a resolved request always carries the hand-off it runs with.
    """

    model_config = ConfigDict(frozen=True)

    name: str
    switch_at: float | None = Field(None, description="None: the server's refiner_switch_at.")


class GenerationRequest(BaseModel):
    """Everything needed to generate images, independent of the API dialect that asked.

    Serialisable to JSON (images as base64) so that a durable job store can keep it.
    ``param`` names in :class:`~pixelmill.core.errors.InvalidRequest` refer to these fields.
    A field that is None is unset: the request policy (:func:`pixelmill.core.policy.resolve`)
    fills it from the server's settings and returns a :class:`ResolvedRequest`, which is
    what is stored and run. Dialects only translate; they never fill a server default.
    """

    model_config = ConfigDict(frozen=True, ser_json_bytes="base64", val_json_bytes="base64")

    mode: Mode = Mode.txt2img
    prompt: str
    negative_prompt: str = ""
    model: str | None = Field(None, description="Model name; None means the server's default.")
    width: int | None = Field(None, description="None: the input image's size (fitted), else the model's.")
    height: int | None = None
    steps: int | None = Field(None, description="None: the server's default_steps.")
    guidance: float | None = Field(None, description="None: the server's default_guidance.")
    seed: int = RANDOM_SEED
    n: int = 1
    scheduler: str | None = Field(None, description="Canonical or A1111 name; None = model default.")
    strength: float | None = Field(None, description="img2img/inpaint; None: the server's default_strength.")
    clip_skip: int | None = None
    init_image: bytes | None = Field(None, description="PNG bytes for img2img/inpaint.")
    mask_image: bytes | None = Field(None, description="PNG bytes, mode L, white = repaint.")
    mask_blur: int | None = Field(None, description="Inpaint mask feathering; None: the server's default.")
    output_format: OutputFormat = OutputFormat.png
    output_quality: int | None = Field(None, description="JPEG/WebP quality 1-100.")
    loras: tuple[LoraSpec, ...] = ()
    controlnets: tuple[ControlSpec, ...] = ()
    return_control_images: bool = Field(False, description="Also return each preprocessed control image.")
    refiner: RefinerSpec | None = None
    family: str | None = Field(None, description="Set by the request policy, never by a client: the model's "
                               "family/variant (``flux/schnell``) detected from its files; None when unknown "
                               "there. Stored with the job and part of the batch key.")


class ResolvedRequest(GenerationRequest):
    """A request after the policy: every server default filled, every limit checked.

    ``steps``, ``guidance``, ``strength`` and ``mask_blur`` are concrete; ``model`` is the
    default model's name where the API host knows it. Two fields may stay None on purpose,
    because only a loaded model knows their value: ``width``/``height`` for txt2img (the
    model's native size) and ``scheduler`` (the model's own scheduler). An img2img or
    inpaint request always has its size (from the input image when the caller gave none).
    """

    steps: int
    guidance: float
    strength: float
    mask_blur: int

    @model_validator(mode="after")
    def _sized_unless_txt2img(self) -> "ResolvedRequest":
        if (self.width is None) != (self.height is None):
            raise ValueError("width and height are both set or both None")
        if self.width is None and self.mode is not Mode.txt2img:
            raise ValueError(f"a resolved {self.mode.value} request needs a size")
        return self


class Progress(BaseModel):
    """Denoising progress of one generation: ``step`` of ``total`` finished."""

    step: int
    total: int
    previews: dict[int, bytes] = Field(default_factory=dict)
    """Live previews made at this step (JPEG or PNG bytes), by index of the request in
    the batch; empty on most reports (see ``preview_steps``)."""


class GeneratedImage(BaseModel):
    """One encoded output image and the seed that made it."""

    model_config = ConfigDict(ser_json_bytes="base64", val_json_bytes="base64")

    data: bytes
    media_type: str
    seed: int
    width: int
    height: int


class JobResult(BaseModel):
    """What a finished generation returns: images plus the facts the ledger needs."""

    images: list[GeneratedImage]
    control_images: list[GeneratedImage] = Field(
        default_factory=list, description="Preprocessed control images, when asked for (PNG).")
    seed: int = Field(description="Seed of the first image; image i used seed + i.")
    model: str
    width: int
    height: int
    steps: int
    sampler: str
    gpu_seconds: float = Field(description="Wall time the accelerator spent on this request.")


class JobError(BaseModel):
    """Why a job failed: a stable ``code`` (e.g. ``worker_lost``) and a message for people."""

    code: str
    message: str


class WebhookSpec(BaseModel):
    """Where to send a job's events, and which ones (``started``, ``progress``, ``completed``).

    ``body`` is what each delivery carries (``job``: the native job view; ``prediction``:
    the Replicate prediction, with URLs built on ``base_url``) and ``signing`` how it is
    signed (``pixelmill``: ``X-Pixelmill-Signature``; ``standard``: Standard Webhooks, as
    Replicate signs). Stored with the job, so whichever process runs it sends the same.
    """

    url: str
    events: tuple[str, ...] = ("completed",)
    body: Literal["job", "prediction"] = "job"
    signing: Literal["pixelmill", "standard"] = "pixelmill"
    base_url: str | None = None
    prediction_id: str | None = Field(None, description="The id a Cog client gave the prediction, sent "
                                      "as the body's id instead of the job id.")


class JobRecord(BaseModel):
    """A job as the durable store keeps it: request, life cycle, lease, results, ledger."""

    id: str
    status: JobStatus
    request: GenerationRequest
    priority: int = 0
    batch_id: str | None = None
    idempotency_key: str | None = None
    api_key_id: str | None = None
    attempt: int = 0
    max_attempts: int = 3
    cancel_requested: bool = False
    worker: str | None = None
    lease_expires_at: datetime | None = None
    heartbeat_at: datetime | None = None
    progress_step: int = 0
    progress_total: int = 0
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    result_ids: list[str] = Field(default_factory=list)
    result_seeds: list[int] = Field(default_factory=list)
    control_result_ids: list[str] = Field(default_factory=list, description="Preprocessed control images.")
    error: JobError | None = None
    webhook: WebhookSpec | None = None
    webhook_state: dict | None = Field(None, description="Last delivery attempt per event.")
    # cost-ledger fields
    model: str | None = None
    mode: Mode
    width: int | None = None
    height: int | None = None
    steps: int
    sampler: str | None = None
    images: int = 0
    gpu_seconds: float | None = None
    # gateway (pixelmill.gateway): who serves the job and the upstream's own id for it
    route: str = Field("local", description="'local' (this fleet's workers) or an upstream backend's name.")
    upstream_id: str | None = Field(None, description="The upstream's prediction/request id, once sent.")
    upstream_cost: float | None = Field(None, description="Hosted price paid upstream for this job (USD).")
    shadow_of: str | None = Field(None, description="The local job this upstream shadow run compares with.")
    cancel_at: datetime | None = Field(None, description="When an unfinished job is canceled (a deadline its "
                                       "client set, e.g. Replicate's Cancel-After); None: never.")

"""OpenAI Images wire models and their translation to :class:`GenerationRequest`.

Fields OpenAI defines are accepted with OpenAI's meaning (``style``, ``user``,
``moderation`` are accepted and ignored). pixelmill's extension fields ride in the same
body (``negative_prompt``, ``seed``, ``steps``, ``guidance``, ``scheduler``, …); the
``openai`` SDK sends them with ``extra_body``.
"""

from __future__ import annotations

import base64
import re
import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from pixelmill.api.adapters_wire import AdapterFields
from pixelmill.core.types import RANDOM_SEED, GenerationRequest, JobRecord, Mode, OutputFormat
from pixelmill.core.errors import InvalidRequest
from pixelmill.settings import Settings

PARAM_NAMES = {
    "width": "size",
    "height": "size",
    "init_image": "image",
    "mask_image": "mask",
    "output_quality": "output_compression",
}
"""Internal field → OpenAI wire parameter, for error bodies."""

SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")
Quality = Literal["auto", "standard", "hd", "low", "medium", "high"]
QUALITY_STEPS = {"low": 15, "medium": 25, "high": 40, "hd": 40}
"""Steps per OpenAI quality; ``auto`` and ``standard`` use the server's ``default_steps``."""


def parse_size(size: str | None) -> tuple[int | None, int | None]:
    """``"WxH"`` → (W, H); ``"auto"`` or None → (None, None) = the default size."""
    if size in (None, "", "auto"):
        return None, None
    match = SIZE.fullmatch(size)
    if match is None:
        raise InvalidRequest(f"size must be 'auto' or WIDTHxHEIGHT like '1024x1024', got {size!r}", param="size")
    return int(match[1]), int(match[2])


class _Common(AdapterFields):
    """Fields shared by generations, edits and variations."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    n: int = Field(1, description="Number of images, 1-10.")
    size: str | None = Field("auto", description="'auto' or WIDTHxHEIGHT, multiples of 8.")
    response_format: Literal["b64_json", "url"] | None = None
    output_format: OutputFormat = OutputFormat.png
    output_compression: int | None = Field(None, ge=0, le=100, description="JPEG/WebP quality.")
    user: str | None = None
    # pixelmill extensions
    negative_prompt: str = ""
    seed: int = Field(RANDOM_SEED, description="-1 = random; image i uses seed + i.")
    steps: int | None = Field(None, description="Denoising steps; overrides quality.")
    guidance: float | None = Field(None, description="CFG scale.")
    scheduler: str | None = Field(None, description="e.g. euler_a, dpmpp_2m_karras, 'DPM++ 2M Karras'.")
    clip_skip: int | None = None

    def _base_fields(self, settings: Settings, quality: Quality | None = None) -> dict:
        width, height = parse_size(self.size)
        steps = self.steps or QUALITY_STEPS.get(quality or "auto", settings.default_steps)
        return {
            "model": self.model,
            "n": self.n,
            "width": width,
            "height": height,
            "steps": steps,
            "guidance": settings.default_guidance if self.guidance is None else self.guidance,
            "negative_prompt": self.negative_prompt,
            "seed": self.seed,
            "scheduler": self.scheduler,
            "clip_skip": self.clip_skip,
            "output_format": self.output_format,
            "output_quality": self.output_compression or None,
            **self.adapter_fields(settings),
        }


class ImageGenerationCreate(_Common):
    """Body of ``POST /v1/images/generations``."""

    prompt: str
    quality: Quality | None = "auto"
    style: str | None = Field(None, description="Accepted for compatibility; ignored.")
    background: Literal["auto", "opaque"] | None = None
    moderation: str | None = Field(None, description="Accepted for compatibility; ignored.")
    stream: Literal[False] | None = Field(None, description="Streaming is not supported.")

    def to_request(self, settings: Settings) -> GenerationRequest:
        return GenerationRequest(prompt=self.prompt, **self._base_fields(settings, self.quality))


class ImageEditForm(_Common):
    """Form fields of ``POST /v1/images/edits`` (the files ``image`` and ``mask`` come separately)."""

    prompt: str
    quality: Quality | None = "auto"
    mask_mode: Literal["alpha", "luminance"] = Field(
        "alpha", description="alpha: transparent mask pixels are edited (OpenAI). luminance: white is edited."
    )
    mask_blur: int = Field(4, description="Feathering of the mask edge, in pixels.")
    strength: float = Field(1.0, description="How much of the masked area is re-noised (0-1).")

    def to_request(self, settings: Settings, image_png: bytes, mask_png: bytes, size: tuple[int, int]) -> GenerationRequest:
        fields = self._base_fields(settings, self.quality) | {"width": size[0], "height": size[1]}
        return GenerationRequest(
            mode=Mode.inpaint, prompt=self.prompt, init_image=image_png, mask_image=mask_png,
            mask_blur=self.mask_blur, strength=self.strength, **fields,
        )


class ImageVariationForm(_Common):
    """Form fields of ``POST /v1/images/variations`` (the file ``image`` comes separately)."""

    prompt: str = Field("", description="Optional prompt to steer the variation (extension).")
    strength: float | None = Field(None, description="img2img strength; default from the server.")

    def to_request(self, settings: Settings, image_png: bytes, size: tuple[int, int]) -> GenerationRequest:
        fields = self._base_fields(settings) | {"width": size[0], "height": size[1]}
        strength = settings.variation_strength if self.strength is None else self.strength
        return GenerationRequest(
            mode=Mode.img2img, prompt=self.prompt, init_image=image_png, strength=strength, **fields
        )


class ImageData(BaseModel):
    """One image of a response; ``seed`` is a pixelmill extension."""

    b64_json: str | None = None
    url: str | None = None
    revised_prompt: str | None = None
    seed: int


class ImagesResponse(BaseModel):
    """OpenAI's images response, with the size and format echoed as OpenAI does."""

    created: int
    data: list[ImageData]
    size: str
    output_format: OutputFormat
    control_images: list[ImageData] | None = Field(
        None, description="pixelmill extension: preprocessed control images (return_control_images).")


def render_response(job: JobRecord, *, images: list[bytes] | None = None, urls: list[str] | None = None,
                    control_images: list[bytes] | None = None, control_urls: list[str] | None = None) -> ImagesResponse:
    """OpenAI's response for a finished job: base64 ``images`` or download ``urls``
    (and the control images the same way, when the request asked for them)."""
    data = [
        ImageData(
            b64_json=base64.b64encode(images[i]).decode() if images is not None else None,
            url=urls[i] if urls is not None else None,
            revised_prompt=job.request.prompt,
            seed=seed,
        )
        for i, seed in enumerate(job.result_seeds)
    ]
    controls = None
    if control_images or control_urls:
        controls = [ImageData(b64_json=base64.b64encode(data).decode(), seed=0) for data in control_images or []]
        controls += [ImageData(url=url, seed=0) for url in control_urls or []]
    return ImagesResponse(
        created=int(time.time()), data=data, control_images=controls,
        size=f"{job.width}x{job.height}", output_format=job.request.output_format,
    )

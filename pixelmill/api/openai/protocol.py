"""OpenAI Images wire models and their translation to :class:`GenerationRequest`.

Fields OpenAI defines are accepted with OpenAI's meaning (``style``, ``user``,
``moderation`` are accepted and ignored). pixelmill's extension fields ride in the same
body (``negative_prompt``, ``seed``, ``steps``, ``guidance``, ``scheduler``, …); the
``openai`` SDK sends them with ``extra_body``.

The models only translate: a field the body leaves out stays unset (None) and the
request policy (:mod:`pixelmill.core.policy`) fills it from the server's settings, so a
value the body does give, ``steps: 0`` included, reaches the policy as given. Numbers are
strict (``n: true`` is refused, not read as 1); the limits in the schema are the default
ones, documented only: the policy enforces the server's own.
"""

from __future__ import annotations

import base64
import re
import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from pixelmill.api.adapters_wire import AdapterFields, FormNumbers, WireFloat, WireInt, documented
from pixelmill.core.types import RANDOM_SEED, SEED_SPACE, GenerationRequest, JobRecord, Mode, OutputFormat
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

IGNORED_FIELDS_HEADER = "X-Pixelmill-Ignored-Fields"
"""Response header naming the request fields the OpenAI routes ignored (comma-separated)."""

SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")
Quality = Literal["auto", "standard", "hd", "low", "medium", "high"]
QUALITY_STEPS = {"low": 15, "medium": 25, "high": 40, "hd": 40}
"""Steps per OpenAI quality when ``steps`` is not given; ``auto`` and ``standard`` leave
steps unset (the server's ``default_steps``)."""
EDIT_STRENGTH = 1.0
"""Strength of an edit that does not say: OpenAI's edits repaint the masked area anew."""


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

    # Unknown fields are kept aside, not refused: the openai SDK adds parameters often
    # (svg, partial_images, safety_identifier, …) and a client on a newer SDK must keep
    # working. They are never silent: the response names them (IGNORED_FIELDS_HEADER).
    model_config = ConfigDict(extra="allow")

    def ignored_fields(self) -> list[str]:
        """The body's fields this server does not know, which it ignored."""
        return sorted(self.model_extra or {})

    model: str | None = None
    n: WireInt = Field(1, description="Number of images (at most the server's max_n, 10 by default).",
                       json_schema_extra=documented(1, "max_n"))
    size: str | None = Field("auto", description="'auto' or WIDTHxHEIGHT, multiples of 8.")
    response_format: Literal["b64_json", "url"] | None = None
    output_format: OutputFormat = OutputFormat.png
    output_compression: WireInt | None = Field(None, ge=0, le=100, description="JPEG/WebP quality.")
    user: str | None = None
    # pixelmill extensions
    negative_prompt: str = Field("", json_schema_extra=documented(max_length="max_prompt_chars"))
    seed: WireInt = Field(RANDOM_SEED, description="-1 = random; image i uses seed + i.",
                          json_schema_extra=documented(RANDOM_SEED, SEED_SPACE - 1))
    steps: WireInt | None = Field(None, description="Denoising steps; overrides quality.",
                                  json_schema_extra=documented(1, "max_steps"))
    guidance: WireFloat | None = Field(None, description="CFG scale.",
                                       json_schema_extra=documented(0, "max_guidance"))
    scheduler: str | None = Field(None, description="e.g. euler_a, dpmpp_2m_karras, 'DPM++ 2M Karras'.")
    clip_skip: WireInt | None = Field(None, json_schema_extra=documented(1, 12))

    def _base_fields(self, settings: Settings, quality: Quality | None = None) -> dict:
        """The request fields every endpoint shares (``settings``: upload limits only)."""
        width, height = parse_size(self.size)
        steps = QUALITY_STEPS.get(quality or "auto") if self.steps is None else self.steps
        return {
            "model": self.model,
            "n": self.n,
            "width": width,
            "height": height,
            "steps": steps,
            "guidance": self.guidance,
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

    prompt: str = Field(json_schema_extra=documented(min_length=1, max_length="max_prompt_chars"))
    quality: Quality | None = "auto"
    style: str | None = Field(None, description="Accepted for compatibility; ignored.")
    background: Literal["auto", "opaque"] | None = None
    moderation: str | None = Field(None, description="Accepted for compatibility; ignored.")
    stream: Literal[False] | None = Field(None, description="Streaming is not supported.")

    def to_request(self, settings: Settings) -> GenerationRequest:
        """The txt2img request (``settings``: limits on decoded control images)."""
        return GenerationRequest(prompt=self.prompt, **self._base_fields(settings, self.quality))


class ImageEditForm(FormNumbers, _Common):
    """Form fields of ``POST /v1/images/edits`` (the files ``image`` and ``mask`` come separately)."""

    prompt: str = Field(json_schema_extra=documented(max_length="max_prompt_chars"))
    quality: Quality | None = "auto"
    mask_mode: Literal["alpha", "luminance"] = Field(
        "alpha", description="alpha: transparent mask pixels are edited (OpenAI). luminance: white is edited."
    )
    mask_blur: WireInt | None = Field(None, description="Feathering of the mask edge, in pixels "
                                      "(default: the server's default_mask_blur).",
                                      json_schema_extra=documented(0, 64))
    strength: WireFloat | None = Field(None, json_schema_extra=documented(0, 1),
                                       description="Share of the masked area re-noised (0-1; default 1).")

    def to_request(self, settings: Settings, image_png: bytes, mask_png: bytes) -> GenerationRequest:
        """The inpaint request; without ``size`` the policy takes the image's (fitted)."""
        strength = EDIT_STRENGTH if self.strength is None else self.strength
        return GenerationRequest(
            mode=Mode.inpaint, prompt=self.prompt, init_image=image_png, mask_image=mask_png,
            mask_blur=self.mask_blur, strength=strength, **self._base_fields(settings, self.quality),
        )


class ImageVariationForm(FormNumbers, _Common):
    """Form fields of ``POST /v1/images/variations`` (the file ``image`` comes separately)."""

    prompt: str = Field("", description="Optional prompt to steer the variation (extension).",
                        json_schema_extra=documented(max_length="max_prompt_chars"))
    strength: WireFloat | None = Field(None, description="img2img strength; default from the server.",
                                       json_schema_extra=documented(0, 1))

    def to_request(self, settings: Settings, image_png: bytes) -> GenerationRequest:
        """The img2img request; without ``size`` the policy takes the image's (fitted)."""
        # Variations have a strength of their own in the settings (a variation keeps less of
        # its input than a plain img2img), so the endpoint, not the policy, picks it.
        strength = settings.variation_strength if self.strength is None else self.strength
        return GenerationRequest(
            mode=Mode.img2img, prompt=self.prompt, init_image=image_png, strength=strength,
            **self._base_fields(settings),
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

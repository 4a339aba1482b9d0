"""Wire models of the native dialect and their translation to :class:`GenerationRequest`."""

from __future__ import annotations

import base64
import binascii

from pydantic import BaseModel, ConfigDict, Field

from pixelmill.domain import RANDOM_SEED, GenerationRequest, JobResult, Mode, OutputFormat
from pixelmill.engine.imageio import decode_upload, reencode_png
from pixelmill.engine.masks import prepare_inpaint
from pixelmill.errors import InvalidRequest
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


class GenerationCreate(BaseModel):
    """Body of ``POST /v1/generate``: all engine parameters, images as base64 or data URLs."""

    model_config = ConfigDict(extra="forbid")

    mode: Mode = Mode.txt2img
    prompt: str
    negative_prompt: str = ""
    model: str | None = None
    width: int | None = Field(None, description="Default: the model's native size (or the image's).")
    height: int | None = None
    steps: int | None = Field(None, description="Default: the server's default_steps.")
    guidance: float | None = Field(None, description="Default: the server's default_guidance.")
    seed: int = Field(RANDOM_SEED, description="-1 = random; image i uses seed + i.")
    n: int = 1
    scheduler: str | None = None
    strength: float = Field(0.75, description="img2img/inpaint: how much of the image is re-noised.")
    clip_skip: int | None = None
    image: str | None = Field(None, description="Input image (img2img, inpaint), base64 or data URL.")
    mask: str | None = Field(None, description="Inpaint mask, white = repaint, base64 or data URL.")
    mask_blur: int = 4
    output_format: OutputFormat = OutputFormat.png
    output_quality: int | None = None

    def to_request(self, settings: Settings) -> GenerationRequest:
        fields = self.model_dump(exclude={"image", "mask", "steps", "guidance"})
        fields["steps"] = self.steps or settings.default_steps
        fields["guidance"] = settings.default_guidance if self.guidance is None else self.guidance
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
    """Result of ``POST /v1/generate``."""

    images: list[ImagePublic]
    seed: int
    model: str
    width: int
    height: int
    steps: int
    sampler: str
    gpu_seconds: float

    @classmethod
    def from_result(cls, result: JobResult) -> "GenerationPublic":
        images = [
            ImagePublic(
                b64_json=base64.b64encode(img.data).decode(), media_type=img.media_type,
                seed=img.seed, width=img.width, height=img.height,
            )
            for img in result.images
        ]
        return cls(images=images, **result.model_dump(exclude={"images"}))

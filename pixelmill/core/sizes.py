"""Image sizes in the request policy: the limits, fitting an input image's size to them,
and reading a PNG's size from its header (no image library: the core stays framework-free).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pixelmill.core.errors import InvalidRequest
from pixelmill.core.types import GenerationRequest

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Limits:
    """What one request may ask for (built by ``Settings.policy()``)."""

    min_side: int
    max_side: int
    max_pixels: int
    max_steps: int
    max_n: int
    max_guidance: float
    max_prompt_chars: int


def check_size(width: int, height: int, limits: Limits) -> None:
    """Width and height within bounds, multiples of 8, and not too many pixels in all."""
    for param, side in (("width", width), ("height", height)):
        if not limits.min_side <= side <= limits.max_side or side % 8:
            raise InvalidRequest(
                f"{param} must be a multiple of 8 between {limits.min_side} and {limits.max_side}, "
                f"got {side}", param=param)
    if width * height > limits.max_pixels:
        raise InvalidRequest(
            f"{width}x{height} is {width * height:,} pixels; the limit is {limits.max_pixels:,}",
            param="width")


def fit_size(width: int, height: int, limits: Limits) -> tuple[int, int]:
    """The largest size with ``width:height``'s aspect that the limits allow (multiples of 8).

    A request that takes its size from an uploaded image runs at this size: a 4000×3000
    photo is generated at the largest allowed size of the same shape instead of refused.
    """
    scale = min(1.0, limits.max_side / max(width, height), (limits.max_pixels / (width * height)) ** 0.5)
    fitted = []
    for side in (width, height):
        side = int(side * scale)
        fitted.append(max(limits.min_side, side - side % 8))
    return fitted[0], fitted[1]


def png_size(data: bytes, *, param: str = "init_image") -> tuple[int, int]:
    """Width and height from a PNG's IHDR header.

    Request images are PNG bytes (each dialect re-encodes its uploads), so reading 24
    bytes gives the size without decoding the image or importing an image library.
    """
    if len(data) < 24 or data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR":
        raise InvalidRequest(f"{param} is not a PNG image", param=param)
    width, height = struct.unpack(">II", data[16:24])
    if not width or not height:
        raise InvalidRequest(f"{param} has no pixels", param=param)
    return width, height


def request_size(request: GenerationRequest, limits: Limits) -> tuple[int | None, int | None]:
    """The given size (checked); else the input image's, fitted; else None (txt2img: the
    model's native size, which only a loaded model knows)."""
    if request.width is not None or request.height is not None:
        if request.width is None or request.height is None:
            raise InvalidRequest("give both width and height, or neither", param="width")
        check_size(request.width, request.height, limits)
        return request.width, request.height
    if request.init_image is None:
        return None, None
    width, height = fit_size(*png_size(request.init_image), limits)
    check_size(width, height, limits)  # an extreme aspect can clamp a side past the pixel budget
    return width, height

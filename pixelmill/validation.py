"""Server-side limits on a :class:`GenerationRequest`, checked before anything is queued.

Every dialect's request passes through :func:`validate_request`, so a limit is
enforced once for all APIs. Violations raise :class:`InvalidRequest` naming the
internal field; dialects translate the name to their own wire parameter.
"""

from __future__ import annotations

from pixelmill.domain import GenerationRequest, Mode
from pixelmill.engine.schedulers import canonical_scheduler
from pixelmill.errors import InvalidRequest
from pixelmill.settings import Settings


def _check_range(value: float, low: float, high: float, param: str) -> None:
    if not low <= value <= high:
        raise InvalidRequest(f"{param} must be between {low:g} and {high:g}, got {value:g}", param=param)


def check_size(width: int, height: int, limits: Settings) -> None:
    """Width and height within bounds, multiples of 8, and not too many pixels in all."""
    for param, side in (("width", width), ("height", height)):
        if not limits.min_side <= side <= limits.max_side or side % 8:
            raise InvalidRequest(
                f"{param} must be a multiple of 8 between {limits.min_side} and "
                f"{limits.max_side}, got {side}",
                param=param,
            )
    if width * height > limits.max_pixels:
        raise InvalidRequest(
            f"{width}x{height} is {width * height:,} pixels; the limit is {limits.max_pixels:,}",
            param="width",
        )


def _check_text(request: GenerationRequest, limits: Settings) -> None:
    if request.mode is Mode.txt2img and not request.prompt.strip():
        raise InvalidRequest("prompt must not be empty", param="prompt")
    for param in ("prompt", "negative_prompt"):
        text = getattr(request, param)
        if len(text) > limits.max_prompt_chars:
            raise InvalidRequest(
                f"{param} is {len(text)} characters; the limit is {limits.max_prompt_chars}",
                param=param,
            )


def _check_images(request: GenerationRequest) -> None:
    if request.mode in (Mode.img2img, Mode.inpaint) and request.init_image is None:
        raise InvalidRequest(f"{request.mode.value} needs an input image", param="init_image")
    if request.mode is Mode.inpaint and request.mask_image is None:
        raise InvalidRequest("inpaint needs a mask", param="mask_image")
    if request.mode is Mode.txt2img and request.init_image is not None:
        raise InvalidRequest("txt2img takes no input image; use img2img", param="init_image")


def validate_request(request: GenerationRequest, limits: Settings) -> None:
    """Raise :class:`InvalidRequest` for the first limit ``request`` breaks."""
    _check_text(request, limits)
    if request.width is not None or request.height is not None:
        if request.width is None or request.height is None:
            raise InvalidRequest("give both width and height, or neither", param="width")
        check_size(request.width, request.height, limits)
    _check_range(request.steps, 1, limits.max_steps, "steps")
    _check_range(request.n, 1, limits.max_n, "n")
    _check_range(request.guidance, 0, limits.max_guidance, "guidance")
    _check_range(request.strength, 0, 1, "strength")
    _check_range(request.mask_blur, 0, 64, "mask_blur")
    if request.seed != -1:
        _check_range(request.seed, 0, 2**32 - 1, "seed")
    if request.clip_skip is not None:
        _check_range(request.clip_skip, 1, 12, "clip_skip")
    if request.output_quality is not None:
        _check_range(request.output_quality, 1, 100, "output_quality")
    _check_images(request)
    if request.scheduler:
        canonical_scheduler(request.scheduler)
    if request.mode is not Mode.txt2img and request.strength == 0:
        raise InvalidRequest("strength 0 would return the input unchanged", param="strength")


def fit_size(width: int, height: int, limits: Settings) -> tuple[int, int]:
    """The largest size with ``width:height``'s aspect that the limits allow (multiples of 8).

    Used when a request takes its size from an uploaded image: a 4000×3000 photo is
    generated at the largest allowed size of the same shape instead of being refused.
    """
    scale = min(1.0, limits.max_side / max(width, height), (limits.max_pixels / (width * height)) ** 0.5)
    fitted = []
    for side in (width, height):
        side = int(side * scale)
        fitted.append(max(limits.min_side, side - side % 8))
    return fitted[0], fitted[1]

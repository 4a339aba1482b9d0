"""Server-side limits on a :class:`GenerationRequest`, checked before anything is queued.

Every dialect's request passes through :func:`validate_request`, so a limit is
enforced once for all APIs. Violations raise :class:`InvalidRequest` naming the
internal field; dialects translate the name to their own wire parameter.
"""

from __future__ import annotations

from pixelmill.core.types import GenerationRequest, LoraSpec, Mode, RefinerSpec
from pixelmill.core.samplers import canonical_scheduler
from pixelmill.core.errors import InvalidRequest
from pixelmill.core.prompt_syntax import extract_lora_tags
from pixelmill.registry.models_dir import check_name
from pixelmill.settings import Settings

MAX_LORAS = 5
MAX_CONTROLNETS = 3
LORA_WEIGHT_RANGE = (-2.0, 2.0)
CONTROL_SCALE_RANGE = (0.0, 2.0)


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


def normalize_request(request: GenerationRequest) -> GenerationRequest:
    """Move A1111 ``<lora:name:weight>`` tags out of the prompt into ``loras``.

    Tags come after the explicit ``loras`` in order; the prompt keeps its other text.
    Runs before validation, so a tag counts against the same limits as the field.
    """
    prompt, tags = extract_lora_tags(request.prompt)
    if not tags:
        return request
    loras = (*request.loras, *(LoraSpec(name=name, weight=weight) for name, weight in tags))
    return request.model_copy(update={"prompt": prompt, "loras": loras})


def _check_adapters(request: GenerationRequest) -> None:
    if len(request.loras) > MAX_LORAS:
        raise InvalidRequest(f"at most {MAX_LORAS} LoRAs per request, got {len(request.loras)}", param="loras")
    seen: set[str] = set()
    for index, lora in enumerate(request.loras):
        check_name(lora.name, param=f"loras[{index}].name")
        _check_range(lora.weight, *LORA_WEIGHT_RANGE, f"loras[{index}].weight")
        if lora.name in seen:
            raise InvalidRequest(f"LoRA {lora.name!r} is given twice; give it once with one weight",
                                 param=f"loras[{index}].name")
        seen.add(lora.name)
    if len(request.controlnets) > MAX_CONTROLNETS:
        raise InvalidRequest(f"at most {MAX_CONTROLNETS} ControlNets per request, got {len(request.controlnets)}",
                             param="controlnets")
    for index, control in enumerate(request.controlnets):
        check_name(control.name, param=f"controlnets[{index}].name")
        _check_range(control.scale, *CONTROL_SCALE_RANGE, f"controlnets[{index}].scale")
        _check_range(control.start, 0, 1, f"controlnets[{index}].start")
        _check_range(control.end, 0, 1, f"controlnets[{index}].end")
        if control.start >= control.end:
            raise InvalidRequest("start must be below end", param=f"controlnets[{index}].start")
    if request.return_control_images and not request.controlnets:
        raise InvalidRequest("return_control_images needs at least one ControlNet", param="return_control_images")


def _check_refiner(request: GenerationRequest) -> None:
    if request.refiner is None:
        return
    check_name(request.refiner.name, param="refiner.name")
    if not 0 < request.refiner.switch_at < 1:
        raise InvalidRequest(f"switch_at must be between 0 and 1 (exclusive), got {request.refiner.switch_at:g}",
                             param="refiner.switch_at")
    if request.mode is Mode.inpaint:
        raise InvalidRequest("a refiner pass is available for txt2img and img2img, not inpaint",
                             param="refiner")
    if request.mode is Mode.img2img:
        if request.controlnets:
            # diffusers' ControlNet img2img pipeline cannot stop early (no denoising_end).
            raise InvalidRequest("a refiner cannot follow ControlNet img2img; use txt2img or drop one",
                                 param="refiner")
        if request.strength <= 1 - request.refiner.switch_at:
            raise InvalidRequest(
                f"with strength {request.strength:g} the base model starts after the refiner's switch point "
                f"{request.refiner.switch_at:g}; raise strength above {1 - request.refiner.switch_at:g} "
                "or lower switch_at", param="refiner.switch_at")


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
    _check_adapters(request)
    _check_refiner(request)
    if request.scheduler:
        canonical_scheduler(request.scheduler)
    if request.mode is not Mode.txt2img and request.strength == 0:
        raise InvalidRequest("strength 0 would return the input unchanged", param="strength")


def prepare_request(request: GenerationRequest, settings: Settings) -> GenerationRequest:
    """The request as it will be queued: LoRA tags moved out, server default refiner
    applied (txt2img/img2img), every limit checked. Raises :class:`InvalidRequest`."""
    request = normalize_request(request)
    if request.refiner is None and settings.refiner and request.mode is not Mode.inpaint:
        request = request.model_copy(
            update={"refiner": RefinerSpec(name=settings.refiner, switch_at=settings.refiner_switch_at)})
    validate_request(request, settings)
    return request


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

"""One pipeline call for a :class:`GenerationRequest`: seeds, scheduler, mode inputs, hooks.

Seeds: image ``i`` of a request uses ``seed + i`` through its own CPU generator, so an
image is reproducible on its own (same seed ⇒ same image, whatever ``n`` was) and CPU
and CUDA draw the same initial noise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from pixelmill.domain import SEED_SPACE, GenerationRequest, Mode, resolve_seed
from pixelmill.engine.device import nan_guard
from pixelmill.engine.imageio import open_png
from pixelmill.engine.masks import blur_mask, outpaint_canvas, paste_back
from pixelmill.engine.schedulers import sampler_label, use_scheduler
from pixelmill.errors import GenerationCanceled


@dataclass
class PipelineOutput:
    """Decoded images (PIL, RGB) with the seed of each and the A1111 sampler label."""

    images: list[Image.Image]
    seeds: list[int]
    sampler: str
    width: int
    height: int


def _round8(value: int) -> int:
    return max(8, value - value % 8)


def target_size(request: GenerationRequest, native: tuple[int, int]) -> tuple[int, int]:
    """Requested size, else the input image's size (img2img/inpaint), else the model's."""
    if request.width is not None and request.height is not None:
        return request.width, request.height
    if request.init_image is not None:
        image = open_png(request.init_image)
        return _round8(image.width), _round8(image.height)
    return native


def _step_callback(on_progress, is_canceled) -> Callable:
    def on_step_end(pipe, step: int, timestep, callback_kwargs: dict) -> dict:
        if on_progress is not None:
            on_progress(step + 1, pipe.num_timesteps)
        if is_canceled is not None and is_canceled():
            # Raising aborts the denoising loop at once; nothing is decoded or returned.
            raise GenerationCanceled("generation canceled")
        return callback_kwargs

    return on_step_end


@dataclass
class _ModeInputs:
    kwargs: dict[str, Any]
    original: Image.Image | None = None
    mask: Image.Image | None = None


def _mode_inputs(request: GenerationRequest, width: int, height: int) -> _ModeInputs:
    if request.mode is Mode.txt2img:
        return _ModeInputs({})
    image = open_png(request.init_image).convert("RGB")
    if request.mode is Mode.img2img:
        image = image.resize((width, height), Image.LANCZOS) if image.size != (width, height) else image
        return _ModeInputs({"image": image, "strength": request.strength})
    mask = open_png(request.mask_image).convert("L")
    if image.width < width or image.height < height:
        image, mask = outpaint_canvas(image, (width, height), mask=mask)  # outpaint: new area masked
    elif image.size != (width, height):
        image = image.resize((width, height), Image.LANCZOS)
        mask = mask.resize((width, height), Image.NEAREST)
    pipe_mask = blur_mask(mask, request.mask_blur)
    kwargs = {"image": image, "mask_image": pipe_mask, "strength": request.strength}
    return _ModeInputs(kwargs, original=image, mask=mask)


def run_batch(pipes, requests: list[GenerationRequest], *, on_progress=None, is_canceled=None) -> list[PipelineOutput]:
    """Run compatible ``requests`` (same :func:`pixelmill.batching.batch_key`) in one pipeline call.

    Every image gets its own prompt, negative prompt and seeded generator, so an image is
    the same whether it was made alone or in a batch. Returns one output per request.
    """
    head = requests[0]
    width, height = target_size(head, pipes.native_size)
    seeds = [[(resolve_seed(r.seed) + i) % SEED_SPACE for i in range(r.n)] for r in requests]
    inputs = [_mode_inputs(r, width, height) for r in requests]
    pipe = pipes.get(head.mode)
    with use_scheduler(pipe, head.scheduler):
        result = _call(pipe, requests, width, height, seeds, inputs, on_progress, is_canceled)
    arrays = np.asarray(result.images)
    nan_guard(arrays)
    images = iter(pipe.image_processor.numpy_to_pil(arrays))
    label = sampler_label(head.scheduler, pipes.scheduler_config)
    outputs = []
    for request, request_seeds, request_inputs in zip(requests, seeds, inputs):
        mine = [next(images) for _ in request_seeds]
        if request_inputs.original is not None:
            mine = [paste_back(request_inputs.original, img, request_inputs.mask, blur=request.mask_blur) for img in mine]
        outputs.append(PipelineOutput(mine, request_seeds, label, width, height))
    return outputs


def _per_image(values: list, seeds: list[list[int]]) -> list:
    """Repeat each request's value once per image it asks for."""
    return [value for value, request_seeds in zip(values, seeds) for _ in request_seeds]


def _call(pipe, requests: list[GenerationRequest], width: int, height: int, seeds: list[list[int]],
          inputs: list[_ModeInputs], on_progress, is_canceled):
    head = requests[0]
    kwargs: dict[str, Any] = {}
    for name in ("image", "mask_image"):
        if name in inputs[0].kwargs:
            kwargs[name] = _per_image([i.kwargs[name] for i in inputs], seeds)
    if head.mode is not Mode.txt2img:
        kwargs["strength"] = head.strength
    # SDXL encodes "no negative prompt" as zeros, not as the empty string; requests in a
    # batch agree on whether they have one (batch key), so None keeps that behaviour.
    negatives = _per_image([r.negative_prompt for r in requests], seeds) if head.negative_prompt else None
    pipe.set_progress_bar_config(disable=True)  # progress goes to on_progress, not stderr
    return pipe(
        prompt=_per_image([r.prompt for r in requests], seeds),
        negative_prompt=negatives,
        width=width,
        height=height,
        num_inference_steps=head.steps,
        guidance_scale=head.guidance,
        num_images_per_prompt=1,
        generator=[torch.Generator("cpu").manual_seed(s) for request_seeds in seeds for s in request_seeds],
        clip_skip=head.clip_skip,
        output_type="np",
        callback_on_step_end=_step_callback(on_progress, is_canceled),
        **kwargs,
    )

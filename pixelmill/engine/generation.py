"""One pipeline call for a :class:`GenerationRequest`: seeds, scheduler, mode inputs, hooks.

Seeds: image ``i`` of a request uses ``seed + i`` through its own CPU generator, so an
image is reproducible on its own (same seed ⇒ same image, whatever ``n`` was) and CPU
and CUDA draw the same initial noise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
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
    extra: dict[str, Any] = field(default_factory=dict)


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


def run_pipeline(pipes, request: GenerationRequest, *, on_progress=None, is_canceled=None) -> PipelineOutput:
    """Run the pipeline for ``request`` on the loaded :class:`PipelineSet`."""
    width, height = target_size(request, pipes.native_size)
    seed = resolve_seed(request.seed)
    seeds = [(seed + i) % SEED_SPACE for i in range(request.n)]
    pipe = pipes.get(request.mode)
    inputs = _mode_inputs(request, width, height)
    with use_scheduler(pipe, request.scheduler):
        result = _call(pipe, request, width, height, seeds, inputs, on_progress, is_canceled)
    arrays = np.asarray(result.images)
    nan_guard(arrays)
    images = pipe.image_processor.numpy_to_pil(arrays)
    if inputs.original is not None:
        images = [paste_back(inputs.original, img, inputs.mask, blur=request.mask_blur) for img in images]
    label = sampler_label(request.scheduler, pipes.scheduler_config)
    return PipelineOutput(images, seeds, label, width, height)


def _call(pipe, request: GenerationRequest, width: int, height: int, seeds: list[int], inputs: _ModeInputs,
          on_progress, is_canceled):
    pipe.set_progress_bar_config(disable=True)  # progress goes to on_progress, not stderr
    return pipe(
        prompt=request.prompt,
        negative_prompt=request.negative_prompt or None,
        width=width,
        height=height,
        num_inference_steps=request.steps,
        guidance_scale=request.guidance,
        num_images_per_prompt=request.n,
        generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
        clip_skip=request.clip_skip,
        output_type="np",
        callback_on_step_end=_step_callback(on_progress, is_canceled),
        **inputs.kwargs,
    )

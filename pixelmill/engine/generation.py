"""One pipeline call for a :class:`GenerationRequest`: seeds, scheduler, mode inputs, hooks.

Seeds: image ``i`` of a request uses ``seed + i`` through its own CPU generator, so an
image is reproducible on its own (same seed ⇒ same image, whatever ``n`` was) and CPU
and CUDA draw the same initial noise.

Families (:mod:`pixelmill.engine.families`): one path for SDXL, FLUX.1 and SD3.5; the
prompt and guidance kwargs differ per family. The family's limits are checked again here
(:func:`pixelmill.core.families.check_family`), because a stored job may have been resolved
by an API host that could not see the model's files. Live previews are SDXL-only: FLUX's
latents are packed 2x2 patches and SD3's have 16 channels that the SDXL projection in
:mod:`pixelmill.engine.preview` would turn into garbage, so other families send none.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from pixelmill.core.types import SEED_SPACE, GenerationRequest, Mode, resolve_seed
from pixelmill.engine import vae
from pixelmill.engine.device import begin_graph_step, nan_guard
from pixelmill.engine.preview import PreviewHook
from pixelmill.images.codecs import open_png
from pixelmill.images.masks import blur_mask, is_outpaint, outpaint_canvas, paste_back
from pixelmill.engine.prompts import chunk_count, encode_prompts
from pixelmill.core.samplers import sampler_label
from pixelmill.engine.schedulers import use_scheduler
from pixelmill.core.errors import GenerationCanceled, GenerationFailed
from pixelmill.core.families import SDXL, check_family
from pixelmill.engine.families import (call_kwargs, control_image_kwarg, denoiser_config, family_of_pipeline,
                                       seeded_global_rng)


@dataclass
class PipelineOutput:
    """Decoded images (PIL, RGB) with the seed of each and the A1111 sampler label."""

    images: list[Image.Image]
    seeds: list[int]
    sampler: str
    width: int
    height: int
    control_images: list[Image.Image] = field(default_factory=list)


def target_size(request: GenerationRequest, native: tuple[int, int]) -> tuple[int, int]:
    """The resolved request's size; None (txt2img only) means the model's native size.

    The request policy settled every other size (an input image's, fitted to the
    limits); the engine never derives one, so what runs is what was checked and stored.
    """
    if request.width is not None and request.height is not None:
        return request.width, request.height
    if request.mode is not Mode.txt2img:
        raise GenerationFailed(f"this {request.mode.value} request has no size: resolve it first")
    return native


def _step_callback(on_progress, is_canceled, *, offset: int = 0, total: int | None = None,
                   preview: PreviewHook | None = None) -> Callable:
    """A ``callback_on_step_end`` reporting progress, handing the latents to the
    ``preview`` hook (see :mod:`pixelmill.engine.preview`) and stopping on cancel.

    With a refiner the base and the refiner each run part of the schedule; ``offset``
    and ``total`` make their steps one count for the client.
    """
    def on_step_end(pipe, step: int, timestep, callback_kwargs: dict) -> dict:
        done = offset + step + 1
        steps = max(total or 0, done, pipe.num_timesteps + offset)
        if on_progress is not None:
            on_progress(done, steps)
        if preview is not None:
            preview(done, steps, callback_kwargs.get("latents"))
        if is_canceled is not None and is_canceled():
            # Raising aborts the denoising loop at once; nothing is decoded or returned.
            raise GenerationCanceled("generation canceled")
        return callback_kwargs

    return on_step_end


@dataclass
class EngineExtras:
    """Engine-wide caches a generation may need besides the base model's pipelines."""

    controlnets: Any  # pixelmill.engine.control.ControlNetCache
    refiners: Any  # pixelmill.engine.refiner.RefinerCache


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
    if is_outpaint(image.size, (width, height)):  # the API decided the mask by the same rule
        image, mask = outpaint_canvas(image, (width, height), mask=mask)  # outpaint: new area masked
    elif image.size != (width, height):
        image = image.resize((width, height), Image.LANCZOS)
        mask = mask.resize((width, height), Image.NEAREST)
    pipe_mask = blur_mask(mask, request.mask_blur)
    kwargs = {"image": image, "mask_image": pipe_mask, "strength": request.strength}
    return _ModeInputs(kwargs, original=image, mask=mask)


def run_batch(pipes, requests: list[GenerationRequest], *, on_progress=None, is_canceled=None,
              extras: EngineExtras | None = None, preview: PreviewHook | None = None) -> list[PipelineOutput]:
    """Run compatible ``requests`` (same :func:`pixelmill.core.batching.batch_key`) in one pipeline call.

    Every image gets its own prompt, negative prompt and seeded generator, so an image is
    the same whether it was made alone or in a batch. Returns one output per request.
    ``preview`` (None: no preview work) sees the latents after each step, refiner included.
    """
    head = requests[0]
    family = getattr(pipes, "family", None)
    if family is not None:
        check_family(head, family, guidance_given=False)  # a server default guidance is not refused
        if family.family != SDXL:
            preview = None  # packed / 16-channel latents: no cheap faithful preview (module doc)
    width, height = target_size(head, pipes.native_size)
    seeds = [[(resolve_seed(r.seed) + i) % SEED_SPACE for i in range(r.n)] for r in requests]
    inputs = [_mode_inputs(r, width, height) for r in requests]
    pipe, control_kwargs, control_images = _pipeline_for(pipes, head, width, height, extras)
    progress_total = _progress_total(head)
    begin_graph_step(pipes.cfg)
    with use_scheduler(pipe, head.scheduler):
        result = _call(pipe, requests, width, height, seeds, inputs,
                       _step_callback(on_progress, is_canceled, total=progress_total, preview=preview),
                       control_kwargs)
    if head.refiner is not None:
        with vae.pipeline_decodes(pipe.vae, pipes.cfg):
            arrays = _refine(pipes, pipe, requests, seeds, result.images, extras, on_progress, is_canceled,
                             preview)
    else:
        arrays = result.images
    arrays = vae.pixels(pipe, arrays, pipes.cfg)  # uint8, converted on the device (engine/vae.py)
    nan_guard(arrays)
    images = iter(vae.to_pil(arrays))
    label = sampler_label(head.scheduler, pipes.scheduler_config)
    outputs = []
    for request, request_seeds, request_inputs in zip(requests, seeds, inputs):
        mine = [next(images) for _ in request_seeds]
        if request_inputs.original is not None:
            mine = [paste_back(request_inputs.original, img, request_inputs.mask, blur=request.mask_blur) for img in mine]
        controls = control_images if request.return_control_images else []
        outputs.append(PipelineOutput(mine, request_seeds, label, width, height, controls))
    return outputs


def _progress_total(request: GenerationRequest) -> int | None:
    """Steps the client will see in all: known up front only for txt2img."""
    return request.steps if request.mode is Mode.txt2img else None


def _pipeline_for(pipes, head: GenerationRequest, width: int, height: int, extras: EngineExtras | None):
    """The pipeline for ``head`` and, with ControlNets, its control kwargs and images."""
    if not head.controlnets:
        return pipes.get(head.mode), {}, []
    from pixelmill.engine.control import preprocess

    if extras is None:
        raise GenerationFailed("ControlNets need the engine's ControlNet cache")
    specs = head.controlnets
    model = extras.controlnets.get(tuple(c.name for c in specs), denoiser_config(pipes.base))
    pipe = pipes.get_controlnet(head.mode, model)
    images = [preprocess(c.image, c.preprocess, (width, height)) for c in specs]
    several = len(specs) > 1

    def per_net(values: list):
        return values if several else values[0]

    image_kw = control_image_kwarg(pipes.family.family, head.mode)  # ``image`` or ``control_image``
    kwargs = {
        image_kw: per_net(images),
        # Always explicit: the img2img ControlNet pipeline's default scale is 0.8, not 1.
        "controlnet_conditioning_scale": per_net([c.scale for c in specs]),
        "control_guidance_start": per_net([c.start for c in specs]),
        "control_guidance_end": per_net([c.end for c in specs]),
    }
    return pipe, kwargs, images


def _refine(pipes, base_pipe, requests, seeds, latents, extras: EngineExtras | None, on_progress, is_canceled,
            preview: PreviewHook | None = None):
    """Finish the base's latents with the request's refiner (ensemble of experts)."""
    from pixelmill.engine.prompts import encode_prompts_refiner
    from pixelmill.engine.refiner import refine, text_lora_disabled

    if extras is None:
        raise GenerationFailed("a refiner needs the engine's refiner cache")
    head = requests[0]
    refiner = pipes.place(extras.refiners.get(head.refiner.name, pipes.base))
    done = base_pipe.num_timesteps
    with text_lora_disabled(refiner.text_encoder_2):  # as refine() itself encodes strings
        text = _prompt_kwargs(encode_prompts_refiner, refiner, requests, seeds)
    return refine(
        refiner, latents, text=text,
        steps=head.steps, switch_at=head.refiner.switch_at, guidance=head.guidance,
        generators=[torch.Generator("cpu").manual_seed(s) for request_seeds in seeds for s in request_seeds],
        scheduler=head.scheduler, clip_skip=head.clip_skip,
        callback_on_step_end=_step_callback(on_progress, is_canceled, offset=done,
                                            total=_progress_total(head), preview=preview),
    )


def _prompt_kwargs(encode, pipe, requests: list[GenerationRequest], seeds: list[list[int]]) -> dict[str, Any]:
    """Per-image prompts for ``pipe``: plain strings, or embeddings when any prompt uses
    A1111 weighting or is longer than one 77-token chunk (compel, see engine/prompts.py)."""
    head = requests[0]
    prompts = _per_image([r.prompt for r in requests], seeds)
    # SDXL encodes "no negative prompt" as zeros, not as the empty string; requests in a
    # batch agree on whether they have one (batch key), so None keeps that behaviour.
    negatives = _per_image([r.negative_prompt for r in requests], seeds) if head.negative_prompt else None
    embeds = encode(pipe, prompts, negatives, clip_skip=head.clip_skip)
    if embeds is None:
        return {"prompt": prompts, "negative_prompt": negatives}
    return embeds.pipeline_kwargs()


def _per_image(values: list, seeds: list[list[int]]) -> list:
    """Repeat each request's value once per image it asks for."""
    return [value for value, request_seeds in zip(values, seeds) for _ in request_seeds]


def prompt_length_groups(pipe, requests: list[GenerationRequest]) -> list[list[int]]:
    """Indices of ``requests`` grouped by how many 77-token chunks their prompts need.

    Embeddings of one call are padded to the longest row, and padding changes a short
    prompt's image; running each length as its own call keeps "same image alone or
    batched". Almost always one group.
    """
    groups: dict[int, list[int]] = {}
    for index, request in enumerate(requests):
        chunks = max(chunk_count(pipe, request.prompt), chunk_count(pipe, request.negative_prompt))
        groups.setdefault(chunks, []).append(index)
    return list(groups.values())


def _call(pipe, requests: list[GenerationRequest], width: int, height: int, seeds: list[list[int]],
          inputs: list[_ModeInputs], callback, extra_kwargs: dict):
    head = requests[0]
    kwargs: dict[str, Any] = dict(extra_kwargs)
    for name in ("image", "mask_image"):
        if name in inputs[0].kwargs:
            kwargs[name] = _per_image([i.kwargs[name] for i in inputs], seeds)
    if head.mode is not Mode.txt2img:
        kwargs["strength"] = head.strength
    if head.refiner is not None:
        from pixelmill.engine.refiner import handoff_kwargs

        kwargs |= handoff_kwargs(head.refiner.switch_at)  # latents out, the refiner decodes
    else:
        kwargs["output_type"] = vae.output_type(pipe)  # SDXL: latents, decoded by engine/vae.py
    pipe.set_progress_bar_config(disable=True)  # progress goes to on_progress, not stderr
    family = family_of_pipeline(pipe)
    if family.family == SDXL:
        text = {**_prompt_kwargs(encode_prompts, pipe, requests, seeds), "guidance_scale": head.guidance,
                "clip_skip": head.clip_skip}
    else:
        negatives = _per_image([r.negative_prompt for r in requests], seeds) if head.negative_prompt else None
        text = call_kwargs(family, prompts=_per_image([r.prompt for r in requests], seeds), negatives=negatives,
                           guidance=head.guidance, clip_skip=head.clip_skip)
    with seeded_global_rng(family.family, bool(head.controlnets), seeds[0][0]):  # SD3 ControlNet only
        return pipe(
            **text,
            width=width,
            height=height,
            num_inference_steps=head.steps,
            num_images_per_prompt=1,
            generator=[torch.Generator("cpu").manual_seed(s) for request_seeds in seeds for s in request_seeds],
            callback_on_step_end=callback,
            **kwargs,
        )

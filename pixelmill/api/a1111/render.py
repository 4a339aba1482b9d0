"""A1111's answer to ``txt2img``/``img2img``: ``images``, ``parameters`` and the ``info`` JSON string.

``info`` carries what clients read (``processing.Processed.js()``): seeds, size, sampler,
model, clip skip and one ``infotexts`` entry per image. The infotext is the very text the
engine writes into each PNG (:func:`pixelmill.images.codecs.generation_infotext`, same
arguments), so ``info`` and the image's ``parameters`` chunk agree to the character.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from pixelmill import __version__
from pixelmill.api.a1111.images import Crop, paste_crop
from pixelmill.core.types import SEED_SPACE, GenerationRequest, JobRecord, JobStatus, Mode, OutputFormat
from pixelmill.images.codecs import encode_image, generation_infotext, open_png
from pixelmill.images.schedules import split_sampler_label

VERSION = f"pixelmill {__version__}"
"""The ``Version`` the engine writes into every infotext."""


def all_seeds(request: GenerationRequest) -> list[int]:
    """The seed of each image: image ``i`` uses ``seed + i`` (a resolved request's seed is concrete)."""
    return [(max(request.seed, 0) + i) % SEED_SPACE for i in range(request.n)]


def a1111_clip_skip(request: GenerationRequest) -> int:
    """A1111's ``CLIP_stop_at_last_layers`` for diffusers' ``clip_skip`` (skipped layers + 1)."""
    return (request.clip_skip or 0) + 1


def infotexts(job: JobRecord) -> list[str]:
    """One infotext per image, as written into its PNG."""
    request = job.request
    width, height = job.width or request.width or 0, job.height or request.height or 0
    return [
        generation_infotext(request, model=job.model or request.model or "", sampler=job.sampler or "",
                            seed=seed, width=width, height=height, version=VERSION)
        for seed in all_seeds(request)
    ]


def info(job: JobRecord, body: dict[str, Any], *, texts: list[str]) -> str:
    """The ``info`` JSON string of A1111's response for ``job`` (``body``: the echoed request)."""
    request = job.request
    seeds = all_seeds(request)
    sampler, schedule = split_sampler_label(job.sampler)  # as the PNG's infotext names them
    subseed = body.get("subseed")
    subseed = subseed if isinstance(subseed, int) and subseed >= 0 else seeds[0]
    extra: dict[str, Any] = {"Schedule type": schedule}
    if request.mode is Mode.inpaint:
        extra["Mask blur"] = request.mask_blur
    started = job.started_at or job.created_at
    data = {
        "prompt": body.get("prompt") or "",
        "all_prompts": [body.get("prompt") or ""] * request.n,
        "negative_prompt": request.negative_prompt,
        "all_negative_prompts": [request.negative_prompt] * request.n,
        "seed": seeds[0],
        "all_seeds": seeds,
        "subseed": subseed,
        "all_subseeds": [subseed] * request.n,
        "subseed_strength": body.get("subseed_strength") or 0,
        "width": job.width or request.width,
        "height": job.height or request.height,
        "sampler_name": sampler,
        "scheduler": schedule,
        "cfg_scale": request.guidance,
        "steps": job.steps,
        "batch_size": body.get("batch_size") or 1,
        "restore_faces": False,
        "face_restoration_model": None,
        "sd_model_name": job.model or request.model,
        "sd_model_hash": None,
        "sd_vae_name": None,
        "sd_vae_hash": None,
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "denoising_strength": (request.strength if request.mode is not Mode.txt2img
                               else body.get("denoising_strength")),
        "extra_generation_params": extra,
        "index_of_first_image": 0,
        "infotexts": texts,
        "styles": body.get("styles") or [],
        "job_timestamp": started.strftime("%Y%m%d%H%M%S"),
        "clip_skip": a1111_clip_skip(request),
        "is_using_inpainting_conditioning": False,
        "version": VERSION,
        "job_id": job.id,
        "interrupted": job.status is JobStatus.canceled,
    }
    return json.dumps(data, ensure_ascii=False)


def pasted_back(png: bytes, crop: Crop, infotext: str) -> bytes:
    """An "only masked" result pasted into the full original, re-encoded with its infotext (CPU)."""
    return encode_image(paste_crop(crop, open_png(png)), OutputFormat.png, parameters=infotext)


def b64(data: bytes) -> str:
    """Raw base64, no ``data:`` prefix (what A1111 answers and webuiapi decodes)."""
    return base64.b64encode(data).decode()

"""The SDXL refiner: loaded next to a base model, sharing its weights, and the hand-off.

An SDXL refiner checkpoint (a diffusers folder whose ``model_index.json`` has
``text_encoder: [null, null]`` and ``requires_aesthetics_score: true``) brings its own
UNet, but its second text encoder, tokenizer and VAE are the base's (SDXL 1.0 ships the
same weights in both). :func:`load_refiner` therefore loads only the refiner UNet and
scheduler and builds a ``StableDiffusionXLImg2ImgPipeline`` around the base's *objects*:
no second copy of OpenCLIP-bigG (1.4 GB in fp16) or the VAE.

Ensemble of experts: the base denoises the first ``switch_at`` of the schedule and
returns latents (:func:`handoff_kwargs`), and :func:`refine` finishes them from the same
point (``denoising_start``) and decodes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pixelmill.engine.device import DeviceConfig, apply_placement
from pixelmill.engine.memory import free_memory
from pixelmill.engine.schedulers import make_scheduler, use_scheduler
from pixelmill.core.errors import InvalidRequest, ModelUnavailable, PixelmillError
from pixelmill.registry.models_dir import ModelKind, ModelRegistry

log = logging.getLogger(__name__)

PARAM = "refiner.name"
# Config keys that must agree between the refiner folder's own copies of the shared
# components and the base's, so that using the base's objects changes nothing.
_TE2_KEYS = ("hidden_size", "projection_dim", "num_hidden_layers", "vocab_size",
             "intermediate_size", "num_attention_heads")
_VAE_KEYS = ("latent_channels", "block_out_channels", "scaling_factor")


def handoff_kwargs(switch_at: float) -> dict[str, Any]:
    """Extra kwargs for the *base* pipeline call when a refiner finishes the image."""
    _check_switch(switch_at)
    return {"denoising_end": switch_at, "output_type": "latent"}


def _check_switch(switch_at: float) -> None:
    if not 0.0 < switch_at < 1.0:
        raise InvalidRequest(f"switch_at must be between 0 and 1 (exclusive), got {switch_at}",
                             param="refiner.switch_at")


# --- loading -----------------------------------------------------------------------------


def load_refiner(path: Path, base: Any, cfg: DeviceConfig, *, name: str) -> Any:
    """Build a refiner pipeline from the folder ``path`` around ``base``'s shared components.

    Only the refiner's UNet (and scheduler config) are read. Raises
    :class:`InvalidRequest` (``refiner.name``) when the refiner does not fit ``base`` and
    :class:`ModelUnavailable` when its files cannot be loaded. Under CUDA offload the
    pipeline is returned unplaced: the caller installs hooks when it hands it out.
    """

    path = Path(path)
    index = _read_json(path / "model_index.json", name)
    unet_config = _read_json(path / "unet" / "config.json", name)
    aesthetics = bool(index.get("requires_aesthetics_score", False))
    check_refiner_fits(path, unet_config, base, aesthetics=aesthetics, name=name)
    unet = _load_unet(path, cfg, name)
    pipe = refiner_pipeline(base, unet, _scheduler(path, base, name), aesthetics=aesthetics,
                            force_zeros=bool(index.get("force_zeros_for_empty_prompt", True)))
    pipe.set_progress_bar_config(disable=True)
    _prepare_unet(unet, cfg)
    if not (cfg.is_cuda and cfg.offload != "none"):
        apply_placement(pipe, cfg)  # shared components are already there: a no-op for them
    return pipe


def refiner_pipeline(base: Any, unet: Any, scheduler: Any, *, aesthetics: bool = True,
                     force_zeros: bool = True) -> Any:
    """A refiner img2img pipeline around ``unet`` using the base's VAE, second text encoder
    and tokenizer objects (no copies) and no first text encoder, as SDXL's refiner is built."""
    from diffusers import StableDiffusionXLImg2ImgPipeline

    return StableDiffusionXLImg2ImgPipeline(
        vae=base.vae, text_encoder=None, tokenizer=None, text_encoder_2=base.text_encoder_2,
        tokenizer_2=base.tokenizer_2, unet=unet, scheduler=scheduler,
        requires_aesthetics_score=aesthetics, force_zeros_for_empty_prompt=force_zeros, add_watermarker=False,
    )


def check_refiner_fits(path: Path, unet_config: Mapping[str, Any], base: Any, *,
                       aesthetics: bool, name: str) -> None:
    """Raise :class:`InvalidRequest` unless the refiner at ``path`` can run on ``base``'s parts."""
    te2 = base.text_encoder_2.config
    time_ids = 5 if aesthetics else 6  # aesthetic score replaces the target size (2 ids)
    expected = {
        "cross_attention_dim": te2.hidden_size,
        "addition_embed_type": "text_time",
        "projection_class_embeddings_input_dim":
            te2.projection_dim + time_ids * unet_config.get("addition_time_embed_dim", 0),
        "in_channels": base.vae.config.latent_channels,
    }
    _compare(unet_config, expected, what="refiner UNet", name=name)
    for sub, keys, component in (("text_encoder_2", _TE2_KEYS, te2),
                                 ("vae", _VAE_KEYS, base.vae.config)):
        own = path / sub / "config.json"
        if own.is_file():
            theirs = _read_json(own, name)
            _compare(theirs, {k: _get(component, k) for k in keys}, what=sub, name=name)


def _compare(actual: Mapping[str, Any], expected: Mapping[str, Any], *, what: str, name: str) -> None:
    for key, want in expected.items():
        have = actual.get(key)
        if _norm(have) != _norm(want):
            raise InvalidRequest(
                f"{name!r} cannot refine this model: {what} {key} is {have}, needs {want} "
                "(not an SDXL refiner, or one for another base model)", param=PARAM)


def _get(config: Any, key: str) -> Any:
    return config.get(key) if isinstance(config, Mapping) else getattr(config, key, None)


def _norm(value: Any) -> Any:
    # Configs hold tuples in memory and lists when read from JSON.
    return tuple(value) if isinstance(value, (list, tuple)) else value


def _read_json(path: Path, name: str) -> dict[str, Any]:
    try:
        return json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelUnavailable(f"cannot load refiner {name!r}: {path.name}: {exc}",
                               param=PARAM) from exc


def _load_unet(path: Path, cfg: DeviceConfig, name: str) -> Any:
    from diffusers import UNet2DConditionModel

    try:
        return UNet2DConditionModel.from_pretrained(
            path, subfolder="unet", dtype=cfg.dtype, use_safetensors=True, local_files_only=True)
    except PixelmillError:
        raise
    except Exception as exc:  # library-specific load failures: one error type for callers
        message = f"{type(exc).__name__}: {exc}"[:500]
        raise ModelUnavailable(f"cannot load refiner {name!r}: {message}", param=PARAM) from exc


def _scheduler(path: Path, base: Any, name: str) -> Any:
    """The refiner's own scheduler (its noise schedule), else a fresh copy of the base's."""
    own = path / "scheduler" / "scheduler_config.json"
    config = _read_json(own, name) if own.is_file() else dict(base.scheduler.config)
    try:
        return make_scheduler(None, config)
    except (AttributeError, KeyError, ValueError) as exc:
        raise ModelUnavailable(f"refiner {name!r}: unusable scheduler config: {exc}",
                               param=PARAM) from exc


def _prepare_unet(unet: Any, cfg: DeviceConfig) -> None:
    """The speed options ``prepare_pipeline`` applies, for the refiner's own UNet only.

    ``prepare_pipeline`` itself would also re-configure (and re-place) the VAE and text
    encoder the base owns, which is the base's job and already done.
    """
    from diffusers.models.attention_processor import AttnProcessor2_0

    unet.set_attn_processor(AttnProcessor2_0())
    if cfg.is_cuda and cfg.offload == "none":
        unet.to(memory_format=torch.channels_last)
        with contextlib.suppress(Exception):  # architectures diffusers cannot fuse run unfused
            unet.fuse_qkv_projections()
    if cfg.compile and cfg.offload != "sequential":
        unet.compile(mode=cfg.compile_mode, fullgraph=False)


# --- cache -------------------------------------------------------------------------------


class RefinerCache:
    """Refiner pipelines by (base pipeline, refiner name); the least recently used is freed.

    A refiner holds references to its base's VAE and second text encoder, so entries of
    a base are dropped when that base pipeline is garbage-collected, and should be
    dropped explicitly with :meth:`release` before the base model is unloaded.
    """

    def __init__(self, registry: ModelRegistry, cfg: DeviceConfig, capacity: int = 1):
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.registry = registry
        self.cfg = cfg
        self.capacity = capacity
        self._pipes: OrderedDict[tuple[int, str], tuple[weakref.ref, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, name: str, base_pipe: Any) -> Any:
        """The refiner pipeline ``name`` sharing ``base_pipe``'s components (loaded once)."""
        entry = self.registry.resolve(ModelKind.checkpoint, name, param=PARAM)
        if entry.single_file:
            raise InvalidRequest(f"refiner {name!r} is a single file; refiners must be diffusers "
                                 "folders (checkpoints/<name>/ with model_index.json)", param=PARAM)
        key = (id(base_pipe), name)
        with self._lock:
            cached = self._pipes.get(key)
            if cached is not None and cached[0]() is base_pipe:
                self._pipes.move_to_end(key)
                return cached[1]
            pipe = load_refiner(entry.path, base_pipe, self.cfg, name=name)
            # The callback drops the entry if the base goes away without release().
            ref = weakref.ref(base_pipe, lambda _, k=key: self._pipes.pop(k, None))
            self._pipes[key] = (ref, pipe)
            while len(self._pipes) > self.capacity:
                self._pipes.popitem(last=False)
            log.info("loaded refiner %s", name)
        free_memory(self.cfg)
        return pipe

    def release(self, base_pipe: Any) -> None:
        """Drop every refiner built on ``base_pipe`` (call before unloading that model)."""
        with self._lock:
            for key in [k for k, (ref, _) in self._pipes.items() if ref() is base_pipe]:
                del self._pipes[key]
        free_memory(self.cfg)

    def close(self) -> None:
        """Drop every refiner pipeline and free its UNet."""
        with self._lock:
            self._pipes.clear()
        free_memory(self.cfg)



# --- the hand-off ------------------------------------------------------------------------


def refine(
    refiner: Any,
    latents: torch.Tensor,
    *,
    text: Mapping[str, Any],
    steps: int,
    switch_at: float,
    guidance: float,
    generators: list[torch.Generator],
    scheduler: str | None = None,
    clip_skip: int | None = None,
    aesthetic_score: float = 6.0,
    negative_aesthetic_score: float = 2.5,
    callback_on_step_end: Callable | None = None,
) -> np.ndarray:
    """Finish the base's ``latents`` with the refiner; returns decoded images (N, H, W, 3) in [0, 1].

    ``latents`` is the base output of a call with :func:`handoff_kwargs` (same
    ``steps``, ``switch_at``, and the same per-image prompts, negatives and generators).
    ``text`` is the prompt input for the refiner: ``prompt``/``negative_prompt`` strings
    or the embedding kwargs of :func:`pixelmill.engine.prompts.encode_prompts_refiner`.
    ``scheduler`` is the request's sampler name, built from the refiner's own config.
    The base's LoRAs are switched off in the shared text encoder for this call: they
    were trained against the base UNet, not the refiner's.
    """
    _check_switch(switch_at)
    with use_scheduler(refiner, scheduler), text_lora_disabled(refiner.text_encoder_2):
        result = refiner(
            **text,
            image=latents,
            num_inference_steps=steps,
            denoising_start=switch_at,
            guidance_scale=guidance,
            num_images_per_prompt=1,
            generator=generators,
            clip_skip=clip_skip,
            aesthetic_score=aesthetic_score,
            negative_aesthetic_score=negative_aesthetic_score,
            output_type="np",
            callback_on_step_end=callback_on_step_end,
        )
    return np.asarray(result.images)


@contextlib.contextmanager
def text_lora_disabled(text_encoder: Any) -> Iterator[None]:
    """Disable enabled PEFT adapter layers of ``text_encoder`` for the block, then restore."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:  # no peft: no LoRA can be loaded either
        yield
        return
    layers = [m for m in text_encoder.modules()
              if isinstance(m, BaseTunerLayer) and not m.disable_adapters]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)

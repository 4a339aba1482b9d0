"""ControlNet inputs and models: control-image preprocessors and an LRU cache of ControlNets.

:func:`preprocess` turns a request's control image (PNG bytes) into the RGB image a
ControlNet pipeline takes, at the generation size. :class:`ControlNetCache` loads
ControlNet models by registry name (SDXL ``ControlNetModel``, ``FluxControlNetModel``,
``SD3ControlNetModel``: the class its config names), checks that they fit the base UNet
or transformer, keeps the most
recently used ones, and hands out the *same* object for the same names while cached --
:meth:`~pixelmill.engine.pipelines.PipelineSet.get_controlnet` caches its pipeline by the
identity of that object, so a stable identity means no pipeline rebuild per request.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from pixelmill.core.types import Preprocess
from pixelmill.engine.device import DeviceConfig
from pixelmill.engine.memory import free_memory
from pixelmill.images.codecs import open_png
from pixelmill.core.errors import InvalidRequest, ModelUnavailable, PixelmillError
from pixelmill.registry.models_dir import ModelKind, ModelRegistry
from pixelmill.observe.metrics import ENGINE_CACHES

log = logging.getLogger(__name__)

CANNY_LOW = 100
"""Canny hysteresis thresholds on 8-bit gradients: the common 100/200 pair (OpenCV's own
examples, A1111's ControlNet defaults). Gradients above ``CANNY_HIGH`` start an edge,
those above ``CANNY_LOW`` continue one; weaker ones are treated as texture/noise."""
CANNY_HIGH = 200

# UNet config keys a ControlNet must share with the base UNet: its residuals are added
# block by block to the UNet's, and it reads the same latents, text states and
# micro-conditioning embeddings.
_MATCHING_KEYS = (
    "in_channels",
    "block_out_channels",
    "layers_per_block",
    "cross_attention_dim",
    "addition_embed_type",
    "addition_time_embed_dim",
    "projection_class_embeddings_input_dim",
)


# --- preprocessing -----------------------------------------------------------------------


def preprocess(image_png: bytes, kind: Preprocess, size: tuple[int, int]) -> Image.Image:
    """The control image for a ControlNet: ``image_png`` decoded, resized to ``size``, processed.

    ``size`` is ``(width, height)``. ``canny`` gives white 1-pixel edges on black (3
    channels), computed *after* resizing so edges stay thin at the generation size;
    ``invert`` inverts each RGB channel; ``none`` only resizes. Always returns RGB.
    """
    image = open_png(image_png).convert("RGB")
    if image.size != tuple(size):
        image = image.resize(tuple(size), Image.LANCZOS)
    kind = Preprocess(kind)
    if kind is Preprocess.canny:
        return canny(image)
    if kind is Preprocess.invert:
        return ImageOps.invert(image)
    return image


def canny(image: Image.Image, low: int = CANNY_LOW, high: int = CANNY_HIGH) -> Image.Image:
    """OpenCV Canny edge map of ``image`` as an RGB image (white edges on black)."""
    import cv2  # optional heavy dependency: only needed when a request asks for canny

    gray = cv2.cvtColor(np.asarray(image.convert("RGB")), cv2.COLOR_RGB2GRAY)
    edges = cv2.Canny(gray, low, high)
    return Image.fromarray(np.repeat(edges[:, :, None], 3, axis=2), mode="RGB")


# --- the model cache ---------------------------------------------------------------------


# A FLUX/SD3 ControlNet's blocks are added to the transformer's hidden states: the same
# latent channels, text widths and inner width (heads x head size; its depth may differ).
_TRANSFORMER_KEYS = ("in_channels", "patch_size", "joint_attention_dim", "pooled_projection_dim", "inner_dim")


def check_fits(controlnet_config: Mapping[str, Any], unet_config: Mapping[str, Any], *,
               name: str, param: str) -> None:
    """Raise :class:`InvalidRequest` unless a ControlNet's config fits the base model's
    (SDXL: its UNet's; FLUX.1 / SD3.5: its transformer's, and the ControlNet's family)."""
    from pixelmill.engine.families import controlnet_family

    mine_family = controlnet_family(str(controlnet_config.get("_class_name", "ControlNetModel")))
    theirs_family = _base_family(unet_config)
    if mine_family != theirs_family:
        raise InvalidRequest(f"ControlNet {name!r} is a {mine_family or 'unknown'} ControlNet; this model is "
                             f"{theirs_family}", param=param)
    keys, part = (_MATCHING_KEYS, "UNet") if theirs_family == "sdxl" else (_TRANSFORMER_KEYS, "transformer")
    for key in keys:
        mine, theirs = _norm(_value(controlnet_config, key)), _norm(_value(unet_config, key))
        if mine != theirs:
            raise InvalidRequest(
                f"ControlNet {name!r} does not fit this model: {key} is {mine} "
                f"but the model's {part} has {theirs} (a ControlNet for another base model?)",
                param=param)


def _base_family(config: Mapping[str, Any]) -> str:
    kind = str(config.get("_class_name", ""))
    return "flux" if kind.startswith("Flux") else "sd3" if kind.startswith("SD3") else "sdxl"


def _value(config: Mapping[str, Any], key: str) -> Any:
    if key == "inner_dim":
        heads, size = config.get("num_attention_heads"), config.get("attention_head_dim")
        return heads * size if isinstance(heads, int) and isinstance(size, int) else None
    return config.get(key)


def _norm(value: Any) -> Any:
    # Configs hold tuples when built in memory and lists when read from JSON.
    return tuple(value) if isinstance(value, (list, tuple)) else value


class ControlNetCache:
    """Loaded ControlNet models by registry name, least recently used freed first.

    ``capacity`` counts individual ControlNets. ``get`` for several names returns a
    ``MultiControlNetModel`` wrapping the cached models; the wrapper is cached too, so
    the same names give the same object until one of its models is evicted. A request
    never evicts its own models: it may exceed ``capacity`` for its duration.
    """

    def __init__(self, registry: ModelRegistry, cfg: DeviceConfig, capacity: int = 3):
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.registry = registry
        self.cfg = cfg
        self.capacity = capacity
        self._models: OrderedDict[str, Any] = OrderedDict()  # name -> ControlNetModel, LRU first
        self._multis: dict[tuple[str, ...], Any] = {}
        self._lock = threading.Lock()

    @property
    def loaded(self) -> tuple[str, ...]:
        """Names of the cached ControlNets, least recently used first."""
        return tuple(self._models)

    def get(self, names: tuple[str, ...], base_unet_config: Mapping[str, Any]) -> Any:
        """The ControlNet for ``names``: a ``ControlNetModel`` for one, a Multi for several.

        Raises :class:`~pixelmill.core.errors.NotFound` / :class:`InvalidRequest` naming
        ``controlnets[i].name`` for an unknown or unfitting model, and
        :class:`ModelUnavailable` when its files cannot be loaded.
        """
        names = tuple(names)
        if not names:
            raise ValueError("at least one ControlNet name is needed")
        with self._lock:
            models = [self._model(name, i, base_unet_config) for i, name in enumerate(names)]
            self._evict(keep=set(names))
            if len(models) == 1:
                return models[0]
            multi = self._multis.get(names)
            if multi is None:
                import diffusers

                from pixelmill.engine.families import CONTROLNET_MODELS, controlnet_family

                family = controlnet_family(type(models[0]).__name__) or "sdxl"
                multi = self._multis[names] = getattr(diffusers, CONTROLNET_MODELS[family][1])(models)
            return multi

    def _model(self, name: str, index: int, unet_config: Mapping[str, Any]) -> Any:
        param = f"controlnets[{index}].name"
        entry = self.registry.resolve(ModelKind.controlnet, name, param=param)
        model = self._models.get(name)
        ENGINE_CACHES.record("controlnet", hit=model is not None)  # for /metrics
        if model is None:
            model = self._load(entry.path, name, param)
        # Checked on every use: the base model may have changed since it was loaded.
        check_fits(model.config, unet_config, name=name, param=param)
        self._models[name] = model
        self._models.move_to_end(name)
        return model

    def _load(self, path, name: str, param: str) -> Any:
        import diffusers

        try:
            # The class its config names (ControlNetModel, FluxControlNetModel, SD3ControlNetModel).
            kind = json.loads((Path(path) / "config.json").read_text()).get("_class_name", "ControlNetModel")
            from pixelmill.engine.families import controlnet_family

            if controlnet_family(kind) is None:
                raise ModelUnavailable(f"ControlNet {name!r} is a {kind}, which pixelmill does not serve",
                                       param=param)
            model = getattr(diffusers, kind).from_pretrained(path, dtype=self.cfg.dtype, use_safetensors=True,
                                                             local_files_only=True)
        except PixelmillError:
            raise
        except Exception as exc:  # library-specific load failures: one error type for callers
            message = f"{type(exc).__name__}: {exc}"[:500]
            raise ModelUnavailable(f"cannot load ControlNet {name!r}: {message}", param=param) from exc
        model.eval()
        if not self.cfg.is_cuda or self.cfg.offload == "none":
            # With CPU offload the pipeline's accelerate hooks place it on demand.
            model.to(self.cfg.device)
        log.info("loaded ControlNet %s", name)
        return model

    def _evict(self, keep: set[str]) -> None:
        while len(self._models) > self.capacity:
            victim = next((n for n in self._models if n not in keep), None)
            if victim is None:
                return
            del self._models[victim]
            self._multis = {k: m for k, m in self._multis.items() if victim not in k}
            log.info("evicted ControlNet %s", victim)
            free_memory(self.cfg)

    def close(self) -> None:
        """Drop every cached ControlNet (and wrapper) and free their memory."""
        with self._lock:
            self._models.clear()
            self._multis.clear()
        free_memory(self.cfg)


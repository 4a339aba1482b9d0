"""One loaded base model and the task pipelines derived from it, sharing its weights.

:class:`PipelineSet` owns a base pipeline (``StableDiffusionXLPipeline``, ``FluxPipeline`` or
``StableDiffusion3Pipeline``: its :attr:`~PipelineSet.family`) and builds the img2img,
inpaint and ControlNet pipelines from it with ``from_pipe``, which reuses the very same
UNet, VAE, text encoders and tokenizers (no copy, no extra memory beyond small Python
objects). Derived pipelines are created lazily, once, and cached.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import torch

from pixelmill.core.types import Mode
from pixelmill.engine.device import DeviceConfig, apply_placement
from pixelmill.engine.memory import free_memory
from pixelmill.core.errors import GenerationFailed

log = logging.getLogger(__name__)


def _pipeline_classes(family: str = "sdxl") -> dict[Mode, Any]:
    from pixelmill.engine.families import pipeline_class

    return {mode: pipeline_class(family, mode) for mode in (Mode.txt2img, Mode.img2img, Mode.inpaint)}


class PipelineSet:
    """All pipelines of one loaded base model, sharing one set of weights.

    Not a lock: the engine serialises generations per set. With CPU offload (CUDA only)
    the accelerate hooks belong to one pipeline's model sequence, so they are re-installed
    whenever a different pipeline of the set is handed out.
    """

    def __init__(self, base: Any, name: str, cfg: DeviceConfig):
        self.name = name
        self.cfg = cfg
        self._base = base
        self._pipes: dict[Mode, Any] = {Mode.txt2img: base}
        self._control: dict[Mode, tuple[Any, Any]] = {}  # mode -> (controlnet, pipeline)
        self._create_lock = threading.Lock()
        self._offload_owner: Any = base
        from pixelmill.engine.families import family_of_pipeline

        self.family = family_of_pipeline(base)  # core.families.ModelFamily, from class and config
        # Captured now: per-request scheduler swaps must never change the model default.
        self._scheduler_config = dict(base.scheduler.config)

    @property
    def base(self) -> Any:
        """The txt2img pipeline every other pipeline was derived from."""
        if self._base is None:
            raise GenerationFailed(f"model {self.name!r} has been unloaded")
        return self._base

    @property
    def scheduler_config(self) -> dict[str, Any]:
        """The model's default scheduler config (with ``_class_name``), as loaded."""
        return dict(self._scheduler_config)

    @property
    def loaded_modes(self) -> frozenset[Mode]:
        """Modes whose (non-ControlNet) pipeline has been created."""
        return frozenset(self._pipes)

    @property
    def native_size(self) -> tuple[int, int]:
        """``(width, height)`` the model was trained at: UNet sample size x VAE scale."""
        from pixelmill.engine.families import native_size

        return native_size(self.base, self.family.family)

    def get(self, mode: Mode) -> Any:
        """The pipeline for ``mode`` (created from the base on first use)."""
        mode = Mode(mode)
        with self._create_lock:
            pipe = self._pipes.get(mode)
            if pipe is None:
                # from_pipe casts the new pipeline -- i.e. the *shared* weights -- to its
                # dtype argument, which defaults to float32; always pass ours.
                # ... and it casts every module: a T5 kept in bf16 (or quantized) gets its dtype back.
                dtypes = _module_dtypes(self.base)
                pipe = _pipeline_classes(self.family.family)[mode].from_pipe(self.base, dtype=self.cfg.dtype)
                if self.family.family != "sdxl":  # SDXL's VAE dtype is engine/vae.py's business
                    _restore_dtypes(self.base, dtypes)
                self._pipes[mode] = pipe
                log.info("model %s: created %s pipeline", self.name, mode.value)
        return self._placed(pipe)

    def get_controlnet(self, mode: Mode, controlnet: Any) -> Any:
        """A ControlNet pipeline for ``mode`` using ``controlnet``.

        ``controlnet`` is a loaded ``ControlNetModel`` (or a list of them, or a
        ``MultiControlNetModel``). One pipeline per mode is cached and rebuilt when a
        different ControlNet object is asked for; the ControlNet cache is the engine's.
        """
        mode = Mode(mode)
        with self._create_lock:
            cached = self._control.get(mode)
            if cached is not None and cached[0] is controlnet:
                pipe = cached[1]
            else:
                model = controlnet
                if isinstance(model, (list, tuple)) and len(model) == 1:
                    model = model[0]  # a one-element list would still run the Multi wrapper
                from pixelmill.engine.families import controlnet_pipeline_class

                pipe = controlnet_pipeline_class(self.family.family, mode).from_pipe(
                    self.base, controlnet=model, dtype=self.cfg.dtype)
                self._control[mode] = (controlnet, pipe)
        if not self.cfg.is_cuda or self.cfg.offload == "none":
            _move(pipe.controlnet, self.cfg)
        return self._placed(pipe)

    def place(self, pipe: Any) -> Any:
        """Hand out a pipeline that shares this set's modules (e.g. a refiner) correctly
        placed: with CPU offload (CUDA) its hooks are installed, the previous owner's removed."""
        return self._placed(pipe)

    def _placed(self, pipe: Any) -> Any:
        if self.cfg.offload != "none" and self.cfg.is_cuda and pipe is not self._offload_owner:
            apply_placement(pipe, self.cfg)
            self._offload_owner = pipe
        return pipe

    def close(self) -> None:
        """Drop every pipeline and free the weights (and the CUDA cache)."""
        pipes = [*self._pipes.values(), *(p for _, p in self._control.values())]
        for pipe in pipes:
            if hasattr(pipe, "remove_all_hooks"):
                pipe.remove_all_hooks()
        self._pipes.clear()
        self._control.clear()
        self._base = None
        self._offload_owner = None
        del pipes
        free_memory(self.cfg)


def _module_dtypes(pipe: Any) -> dict[str, torch.dtype]:
    return {name: module.dtype for name, module in pipe.components.items()
            if isinstance(module, torch.nn.Module) and hasattr(module, "dtype")}


def _restore_dtypes(pipe: Any, dtypes: dict[str, torch.dtype]) -> None:
    for name, dtype in dtypes.items():
        module = pipe.components.get(name)
        if module is not None and module.dtype != dtype and not getattr(module, "is_quantized", False):
            module.to(dtype=dtype)


def _move(module: torch.nn.Module, cfg: DeviceConfig) -> None:
    """Put a (ControlNet) module on the set's device/dtype, skipping no-op moves."""
    param = next(module.parameters())
    if param.dtype != cfg.dtype:
        module.to(dtype=cfg.dtype)
    if param.device != torch.device(cfg.device):
        module.to(cfg.device)

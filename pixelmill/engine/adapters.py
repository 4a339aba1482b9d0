"""Per-request LoRA adapters: loaded once, kept resident, blended with per-request weights.

A :class:`LoraCache` belongs to one loaded model (:class:`~pixelmill.engine.pipelines.PipelineSet`).
Adapters are loaded with diffusers' ``load_lora_weights`` into the shared UNet and text
encoders (so txt2img, img2img, inpaint and ControlNet pipelines all see them), and stay
resident until the least recently used one has to make room (by count and by file size).
Switching between resident adapters is ``set_adapters`` only: the file is not read again.

A request without LoRAs runs with every adapter disabled (peft then calls the base layers
directly), so it gets exactly the image a fresh server would give. For that, loading or
deleting an adapter must leave the model's own parameters as they were, ``requires_grad``
included (see :func:`base_params_kept`). A LoRA that is named but does not fit the model
is an error for that request, never silently skipped.

With a compiled UNet (``hotswap_rank`` set) the UNet parts are not peft adapters of their
own but are copied into fixed slots instead, so that switching never recompiles; see
:mod:`pixelmill.engine.hotswap`. The text encoders work as described above.

A UNet with fused QKV projections (CUDA) runs fused whenever no active LoRA touches it and
unfused while one does (see :class:`QkvFusion`): the first LoRA does not slow the requests
without LoRAs down for good.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pixelmill.core.types import LoraSpec
from pixelmill.engine.memory import collect_garbage
from pixelmill.engine.hotswap import NotHotswappable, UnetLora, UnetSlots
from pixelmill.core.errors import InvalidRequest, ModelUnavailable
from pixelmill.registry.models_dir import ModelKind, ModelRegistry
from pixelmill.observe.metrics import ENGINE_CACHES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Resident:
    """One adapter loaded into the model: its peft name and the file version it came from."""

    adapter: str
    version: tuple[int, int]  # (mtime_ns, size): an overwritten file is loaded afresh
    size: int
    unet: UnetLora | None = None  # hot-swap mode: the UNet part, kept on the CPU


def _file_version(path) -> tuple[int, int]:
    stat = os.stat(path)
    return stat.st_mtime_ns, stat.st_size


class _UnexpectedKeys(logging.Handler):
    """Collects diffusers' warnings about LoRA keys that matched nothing in the model."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if text.startswith("No LoRA keys associated to") and "prefix='text_encoder" in text:
            return  # FLUX/SD3 LoRAs that train the transformer only: diffusers still asks each encoder
        if "unexpected keys" in text.lower() or "no lora" in text.lower():
            self.messages.append(text)


@contextmanager
def _quiet_peft() -> Iterator[None]:
    # peft warns about having several adapters and about deleting the active one:
    # both are exactly what an adapter cache does.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*peft_config.*", category=UserWarning)
        warnings.filterwarnings("ignore", message=".*was active which is now deleted.*", category=UserWarning)
        yield


@contextmanager
def _watch_lora_warnings() -> Iterator[_UnexpectedKeys]:
    # diffusers reports LoRA keys it could not place as a warning and carries on; for a
    # server that is a silently ignored LoRA, so the warning is turned into an error.
    handler = _UnexpectedKeys()
    loggers = [logging.getLogger(name) for name in ("diffusers", "peft")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(min(lg.level or logging.WARNING, logging.WARNING))
    try:
        yield handler
    finally:
        for lg, level in zip(loggers, levels):
            lg.removeHandler(handler)
            lg.setLevel(level)


@contextmanager
def base_params_kept(pipe: Any) -> Iterator[None]:
    """Give the LoRA-loadable modules' parameters back their ``requires_grad`` afterwards.

    peft marks every parameter that is not an adapter's ``requires_grad=False`` whenever it
    injects an adapter (``BaseTuner._mark_only_adapters_as_trainable``). Under ``no_grad``
    that changes no value, but it changes torch's kernel choice: ``matmul`` folds a 3-D
    input that cannot be viewed as 2-D (the UNet's ``proj_in`` input after the permute in
    ``Transformer2DModel``) into one ``mm`` when the weight requires grad, and runs a batched
    ``bmm`` when it does not, which sums in another order (~2e-7 per layer, ~1.5e-6 in the
    demo model's image). Without this, every request after the first LoRA load, with or
    without LoRAs, would differ from a fresh server's. Adapter parameters are left to peft.
    """
    modules = [getattr(pipe, name, None) for name in getattr(pipe, "_lora_loadable_modules", ())]
    saved = [(param, param.requires_grad) for module in modules
             if module is not None and hasattr(module, "parameters") for param in module.parameters()]
    try:
        yield
    finally:
        for param, flag in saved:
            if param.requires_grad != flag:
                param.requires_grad_(flag)


class QkvFusion:
    """Switches a UNet whose QKV projections were fused (``device._fuse_qkv``) between its
    fused attention processors (no LoRA on the UNet) and its original ones (a LoRA active).

    diffusers 0.42 fuses by adding ``to_qkv``/``to_kv`` linears, copies of the q/k/v weights,
    next to the unchanged ``to_q``/``to_k``/``to_v``, and by swapping in ``FusedAttnProcessor2_0``,
    which reads the copies (and ``to_q`` for cross-attention). peft wraps ``to_q``/``to_k``/``to_v``
    only (its target names match whole names: ``to_qkv`` stays a plain linear), so a LoRA's
    q/k/v parts run only under the original processors, and the fused copies stay exact because
    adapters are never merged into the base weights. Switching sets processors only (the same
    processor objects each time): no tensor is copied, and a compiled UNet finds the graph it
    already has for each variant (tests/unit/engine/test_fused_qkv.py). ``unfuse_qkv_projections``
    would also unfuse the VAE, which no LoRA touches, and ``fuse_qkv_projections`` would copy
    the weights again (new tensors: CUDA graphs would be recorded again).
    """

    def __init__(self, pipe: Any):
        self._unet = getattr(pipe, "unet", None)
        current = getattr(self._unet, "attn_processors", None) or {}
        original = getattr(self._unet, "original_attn_processors", None)
        fused = bool(original) and any("Fused" in type(p).__name__ for p in current.values())
        self._fused = dict(current) if fused else None
        self._original = dict(original) if fused else None
        self.fused = fused
        """Whether the fused processors run now."""

    @property
    def available(self) -> bool:
        """Whether this UNet was fused (else :meth:`use` does nothing)."""
        return self._fused is not None

    def use(self, fused: bool) -> None:
        """Run the fused processors (``fused``) or the original ones."""
        if self._fused is None or fused == self.fused:
            return
        # set_attn_processor pops from the dict it is given: hand it a copy.
        self._unet.set_attn_processor(dict(self._fused if fused else self._original))
        self.fused = fused


class LoraCache:
    """LoRA adapters resident in one model, LRU by count and total file bytes."""

    def __init__(self, pipe: Any, model_name: str, registry: ModelRegistry, *,
                 max_count: int, max_bytes: int, hotswap_rank: int | None = None):
        """``hotswap_rank`` (for a compiled UNet): hot-swap UNet parts into slots of that rank."""
        self._pipe = pipe
        self._model = model_name
        self._registry = registry
        self.max_count = max_count
        self.max_bytes = max_bytes
        self._resident: OrderedDict[str, _Resident] = OrderedDict()  # name -> adapter, LRU first
        self._serial = 0
        self._enabled: bool | None = False  # peft layers live? None = mixed (after a load)
        self.loads = 0  # adapters read from disk, for tests and the benchmark
        self._slots = UnetSlots(pipe.unet, hotswap_rank) if hotswap_rank is not None else None
        self._fusion = QkvFusion(pipe)

    @property
    def resident(self) -> list[str]:
        """Names of the resident adapters, least recently used first."""
        return list(self._resident)

    def activate(self, loras: tuple[LoraSpec, ...]) -> None:
        """Make exactly ``loras`` (with their weights) active; everything else off.

        Raises :class:`NotFound`/:class:`InvalidRequest` naming ``loras[i].name`` for a
        LoRA that does not exist or does not fit this model.
        """
        active: list[tuple[_Resident, float]] = []
        for index, spec in enumerate(loras):
            resident = self._ensure_loaded(spec.name, param=f"loras[{index}].name", keep=loras)
            if spec.weight != 0:  # weight 0 is "off": skipping it is exact, not approximate
                active.append((resident, spec.weight))
        if self._slots is not None:
            self._fusion.use(not any(r.unet is not None and r.unet.layers for r, _ in active))
            self._activate_hotswap(active)
            return
        unet_adapters = getattr(getattr(self._pipe, "unet", None), "peft_config", None) or {}
        self._fusion.use(not any(resident.adapter in unet_adapters for resident, _ in active))
        adapters = [resident.adapter for resident, _ in active]
        weights = [weight for _, weight in active]
        # ``_enabled`` is None after a load: peft leaves layers that were disabled before
        # disabled and enables fresh ones, so the state is mixed until set explicitly.
        if adapters:
            if self._enabled is not True:
                self._pipe.enable_lora()  # set_adapters alone does not undo disable_lora
            self._pipe.set_adapters(adapters, adapter_weights=weights)
            self._enabled = True
        elif self._enabled is not False:
            self._pipe.disable_lora()
            self._enabled = False

    def _activate_hotswap(self, active: list[tuple[_Resident, float]]) -> None:
        """UNet parts into the slots; text-encoder parts as ordinary (uncompiled) adapters."""
        from diffusers.loaders.lora_base import (
            disable_lora_for_text_encoder,
            enable_lora_for_text_encoder,
            set_adapters_for_text_encoder,
        )

        self._slots.assign([(r.unet, w) for r, w in active if r.unet is not None and r.unet.layers])
        for component in self._pipe._lora_loadable_modules:
            encoder = getattr(self._pipe, component, None)
            present = getattr(encoder, "peft_config", None) if component != "unet" else None
            if not present:
                continue
            chosen = [(r.adapter, w) for r, w in active if r.adapter in present]
            if chosen:
                enable_lora_for_text_encoder(encoder)  # set_adapters alone does not undo a disable
                set_adapters_for_text_encoder([a for a, _ in chosen], encoder, [w for _, w in chosen])
            else:
                disable_lora_for_text_encoder(encoder)

    def _ensure_loaded(self, name: str, *, param: str, keep: tuple[LoraSpec, ...]) -> _Resident:
        entry = self._registry.resolve(ModelKind.lora, name, param=param)
        version = _file_version(entry.path)
        resident = self._resident.get(name)
        hit = resident is not None and resident.version == version
        ENGINE_CACHES.record("lora", hit=hit)  # for /metrics
        if hit:
            self._resident.move_to_end(name)
            return resident
        with base_params_kept(self._pipe):
            if resident is not None:  # the file changed since it was loaded
                self._delete(name)
            self._make_room(entry.size_bytes, keep={spec.name for spec in keep})
            adapter = self._load(entry.path, name, param=param)
            unet = self._take_unet_part(adapter, name, param=param) if self._slots is not None else None
        self._resident[name] = resident = _Resident(adapter, version, entry.size_bytes, unet)
        return resident

    def _take_unet_part(self, adapter: str, name: str, *, param: str) -> UnetLora:
        """Hot-swap mode: move the just-loaded UNet part to the CPU and make the slots fit it."""
        try:
            unet = self._slots.take(adapter)
        except NotHotswappable as exc:
            self._discard(adapter)
            raise InvalidRequest(f"LoRA {name!r} {exc}", param=param) from None
        self._slots.cover(unet)
        return unet

    def _load(self, path, name: str, *, param: str) -> str:
        self._serial += 1
        adapter = f"pm{self._serial}"  # peft keys modules by adapter name: no '.' or '-'
        if getattr(self._pipe, "fusing_transformer", False):
            # A fused transformer (not done by pixelmill) cannot be switched back: unfuse for good.
            self._pipe.unfuse_qkv_projections()
        with _watch_lora_warnings() as caught, _quiet_peft():
            try:
                self._pipe.load_lora_weights(str(path), adapter_name=adapter, use_safetensors=True)
            except (ValueError, RuntimeError, KeyError) as exc:
                self._discard(adapter)
                raise InvalidRequest(f"LoRA {name!r} cannot be applied to model {self._model!r}: {exc}",
                                     param=param) from None
            except OSError as exc:
                self._discard(adapter)
                raise ModelUnavailable(f"LoRA {name!r} could not be read: {exc}", param=param) from None
        if caught.messages or not self._is_loaded(adapter):
            self._discard(adapter)
            detail = caught.messages[0] if caught.messages else "none of its layers match the model"
            raise InvalidRequest(f"LoRA {name!r} does not fit model {self._model!r}: {detail}", param=param)
        self.loads += 1
        self._enabled = None
        log.info("model %s: loaded LoRA %s", self._model, name)
        return adapter

    def _is_loaded(self, adapter: str) -> bool:
        return any(adapter in names for names in self._pipe.get_list_adapters().values())

    def _make_room(self, size: int, *, keep: set[str]) -> None:
        def over() -> bool:
            used = sum(r.size for r in self._resident.values())
            return len(self._resident) + 1 > self.max_count or used + size > self.max_bytes

        for name in [n for n in self._resident if n not in keep]:
            if not over():
                break
            self._delete(name)

    def _delete(self, name: str) -> None:
        resident = self._resident.pop(name)
        self._discard(resident.adapter)
        if self._slots is not None and resident.unet is not None:
            self._slots.forget(resident.unet)
        log.info("model %s: unloaded LoRA %s", self._model, name)

    def _discard(self, adapter: str) -> None:
        """Delete ``adapter`` from every component that has it, and free its memory."""
        if self._is_loaded(adapter):
            with _quiet_peft():
                self._pipe.delete_adapters([adapter])
        # No gc.collect() here: the adapter's tensors are freed by reference counting as
        # peft drops them (the drift test proves it), and a full collection costs ~0.2 s.

    def clear(self) -> None:
        """Unload every adapter (the model stays loaded)."""
        with base_params_kept(self._pipe):
            for name in list(self._resident):
                self._delete(name)
        self._enabled = False
        self._fusion.use(True)
        collect_garbage()

"""LoRA hot-swap for a compiled UNet: fixed adapter slots whose tensors change in place.

Under ``torch.compile`` every new peft module, every new adapter name and every change of
the float ``scaling`` that ``set_adapters`` writes invalidates the compiled graph's guards,
and a recompile of a real SDXL UNet takes minutes. So with ``--compile`` the UNet gets
:data:`SLOT_COUNT` LoRA adapters ("slots", one per LoRA a request may name), all of rank
``lora_max_rank``, all active forever, with their ``scaling`` held in 0-dim tensors (peft's
``prepare_model_for_compiled_hotswap``). Serving a request only writes into those tensors:

* a LoRA's ``lora_A``/``lora_B`` are copied into a slot (zero-padded to the slot rank; a
  layer the LoRA does not touch gets zeros);
* its per-request weight goes into the slot's scaling tensors (``alpha / r * weight``);
* an unused slot has scaling 0, so it adds exactly 0: weight 0 and "no LoRA" give the
  same pixels as a UNet without adapters (for finite activations, which images need).

Text encoders are not compiled; their LoRA parts stay ordinary peft adapters (diffusers
cannot hot-swap text encoders anyway). A LoRA is read from disk once, through the normal
``load_lora_weights`` path (so every format diffusers reads works and scales exactly as
without compile); its UNet part is then copied to CPU memory and removed from the UNet.

Limits: a LoRA of a rank above ``lora_max_rank`` is refused, as are DoRA, LoRA biases and
layers other than Linear/Conv2d. The slots cover the UNet layers of the LoRAs seen so far;
the first LoRA builds them and a later one that targets further layers widens them, and
both cost one recompile. After that, switching LoRAs and weights never recompiles.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from pixelmill.core.policy import MAX_LORAS

log = logging.getLogger(__name__)

SLOT_COUNT = MAX_LORAS
"""Adapter slots in a compiled UNet: a request may combine up to this many LoRAs."""

SLOT_PREFIX = "pmslot"  # peft matches adapter names as substrings: distinct from "pm<n>"


class NotHotswappable(ValueError):
    """The LoRA is valid for the model but cannot live in a hot-swap slot."""


@dataclass(frozen=True)
class UnetLora:
    """The UNet part of one LoRA, on the CPU: ``module -> (lora_A, lora_B, alpha / r)``."""

    layers: dict[str, tuple[torch.Tensor, torch.Tensor, float]]


class UnetSlots:
    """The :data:`SLOT_COUNT` fixed adapter slots of one compiled UNet."""

    def __init__(self, unet: Any, rank: int):
        self._unet = unet
        self.rank = rank
        self.names = [f"{SLOT_PREFIX}{i}" for i in range(SLOT_COUNT)]
        self._active = list(self.names)  # the one list object every slot layer holds
        self.targets: frozenset[str] = frozenset()
        self._modules: dict[str, Any] = {}
        self._content: list[UnetLora | None] = [None] * SLOT_COUNT  # what each slot's tensors hold
        self._scale: list[tuple[int, float]] = [(0, 0.0)] * SLOT_COUNT  # (id(content), weight) applied
        self._used = [0] * SLOT_COUNT  # last request serial per slot, for LRU reuse
        self._serial = 0
        # diffusers would pad and convert only the first adapter loaded after
        # enable_lora_hotswap, and refuses to once the UNet is compiled; the slots are
        # prepared here instead, all at once, and staging loads must stay ordinary loads.
        if getattr(unet, "_prepare_lora_hotswap_kwargs", None) is not None:
            unet._prepare_lora_hotswap_kwargs = None

    def cover(self, lora: UnetLora) -> None:
        """Make the slots reach every layer ``lora`` touches (rebuilding them: a recompile)."""
        wanted = self.targets | set(lora.layers)
        if wanted == self.targets:
            return
        from peft import LoraConfig
        from peft.utils.hotswap import prepare_model_for_compiled_hotswap

        if self.targets:
            log.warning("LoRA hot-swap slots widened to %d layers: the UNet recompiles once", len(wanted))
        config = dict(r=self.rank, lora_alpha=self.rank, lora_dropout=0.0, target_modules=sorted(wanted))
        # Creating layers draws from the global RNG; keep generations independent of it.
        with torch.random.fork_rng(devices=[]), _quiet(), torch.no_grad():
            if self.targets:
                self._unet.delete_adapters(self.names)
            for name in self.names:
                self._unet.add_adapter(LoraConfig(**config), adapter_name=name)
            self._unet.set_adapters(self.names, [1.0] * SLOT_COUNT)  # all active, for good
            prepare_model_for_compiled_hotswap(self._unet, target_rank=self.rank,
                                               config=self._unet.peft_config, check_compiled="ignore")
        self.targets = frozenset(wanted)
        self._modules = {name: self._unet.get_submodule(name) for name in sorted(wanted)}
        self.reactivate()
        self._content = [None] * SLOT_COUNT
        self._scale = [(-1, 0.0)] * SLOT_COUNT
        self._set_scale(range(SLOT_COUNT), [None] * SLOT_COUNT, [0.0] * SLOT_COUNT)
        for slot in range(SLOT_COUNT):
            self._fill(slot, None)

    def take(self, adapter: str) -> UnetLora:
        """Copy adapter ``adapter`` (just loaded) out of the UNet into CPU memory, delete it.

        Raises :class:`NotHotswappable` (after deleting it) if it cannot be put in a slot.
        Does not change the slots: call :meth:`cover` with the result before :meth:`assign`.
        """
        from peft.tuners.lora import Conv2d, Linear, LoraLayer

        layers: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}
        problem = None
        for name, module in self._unet.named_modules():
            if not isinstance(module, LoraLayer) or adapter not in module.lora_A:
                continue
            if not isinstance(module, (Linear, Conv2d)) or getattr(module.get_base_layer(), "groups", 1) != 1:
                problem = f"layer {name} ({type(module.get_base_layer()).__name__}) is not supported"
            elif module.use_dora.get(adapter) or module.lora_B[adapter].bias is not None:
                problem = "DoRA and LoRA biases are not supported"
            elif module.lora_A[adapter].weight.shape[0] > self.rank:
                problem = (f"its rank {module.lora_A[adapter].weight.shape[0]} is above lora_max_rank="
                           f"{self.rank} (raise --lora-max-rank to serve it)")
            if problem:
                break
            a, b = (module.lora_A[adapter].weight, module.lora_B[adapter].weight)
            layers[name] = (a.detach().to("cpu", copy=True), b.detach().to("cpu", copy=True),
                            float(module.scaling[adapter]))
        if adapter in getattr(self._unet, "peft_config", {}):
            with _quiet():
                self._unet.delete_adapters([adapter])
        self.reactivate()
        if problem:
            raise NotHotswappable(f"cannot be hot-swapped under --compile: {problem}")
        return UnetLora(layers)

    def assign(self, loras: list[tuple[UnetLora, float]]) -> None:
        """Make exactly ``loras`` (UNet parts with their weights) active in the slots."""
        if len(loras) > SLOT_COUNT:
            raise ValueError(f"at most {SLOT_COUNT} LoRAs can be hot-swapped at once")
        self.reactivate()  # a failed load or an eviction since the last call may have changed it
        if not self.targets:
            return  # no slots yet: nothing to switch off
        self._serial += 1
        plan: list[tuple[UnetLora, float] | None] = [None] * SLOT_COUNT
        missing = []
        for lora, weight in loras:
            # A LoRA already in a slot stays there: switching back costs no copy.
            slot = next((i for i, held in enumerate(self._content) if held is lora and plan[i] is None), None)
            if slot is None:
                missing.append((lora, weight))
            else:
                plan[slot] = (lora, weight)
        free = sorted((i for i in range(SLOT_COUNT) if plan[i] is None),
                      key=lambda i: (self._content[i] is not None, self._used[i]))
        for (lora, weight), slot in zip(missing, free):
            self._fill(slot, lora)
            plan[slot] = (lora, weight)
        for slot, entry in enumerate(plan):
            if entry is not None:
                self._used[slot] = self._serial
        self._set_scale(range(SLOT_COUNT), [e[0] if e else None for e in plan],
                        [e[1] if e else 0.0 for e in plan])

    def reactivate(self) -> None:
        """Make the slots the active adapters again (after any adapter was loaded or deleted)."""
        # peft makes a freshly loaded adapter active and, when it is deleted, activates
        # whatever remains; the slots must be the active set again before the next call.
        # Dynamo guards that all layers share one list object, so it is always this one.
        for module in self._modules.values():
            if module._active_adapter is not self._active:
                module.set_adapter(self._active)

    def forget(self, lora: UnetLora) -> None:
        """Drop ``lora`` (evicted) from the slots; it must not be active."""
        for slot, held in enumerate(self._content):
            if held is lora:
                self._fill(slot, None)

    def _fill(self, slot: int, lora: UnetLora | None) -> None:
        name = self.names[slot]
        layers = lora.layers if lora is not None else {}
        with torch.no_grad():
            for module_name, module in self._modules.items():
                a, b = module.lora_A[name].weight, module.lora_B[name].weight
                a.zero_()
                b.zero_()
                if module_name in layers:
                    src_a, src_b, _ = layers[module_name]
                    rank = src_a.shape[0]
                    a[:rank].copy_(src_a)
                    b[:, :rank].copy_(src_b)
        self._content[slot] = lora
        self._scale[slot] = (-1, 0.0)  # the slot's scaling must be rewritten for this content

    def _set_scale(self, slots, loras, weights) -> None:
        # fill_ on the 0-dim scaling tensors: values change, guards do not.
        for slot, lora, weight in zip(slots, loras, weights):
            state = (id(lora) if lora is not None and weight else 0, weight if lora is not None else 0.0)
            if self._scale[slot] == state:
                continue
            name = self.names[slot]
            layers = lora.layers if lora is not None and weight else {}
            for module_name, module in self._modules.items():
                part = layers.get(module_name)
                module.scaling[name].fill_(part[2] * weight if part is not None else 0.0)
            self._scale[slot] = state


@contextmanager
def _quiet() -> Iterator[None]:
    # peft warns about several adapters and about deleting an active one: both are the
    # point of slots and of staging loads.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(peft_config|was active which is now deleted).*")
        yield

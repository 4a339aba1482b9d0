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

Sized from the LoRAs actually seen, not from the limits: the slots cover the UNet layers
of the LoRAs seen so far, at the highest rank seen (rounded up to a power of two, at least
8, at most ``lora_max_rank``), and there are as many as the most LoRAs one request combined
(doubling, at most :data:`SLOT_COUNT`). Growing any of the three rebuilds the slots (one recompile each time);
after that, switching LoRAs and weights never recompiles.

A batch without LoRAs switches the slot layers off (peft's ``disable_adapters``), and a UNet
with fused QKV projections back to its fused processors (``adapters.QkvFusion``), so it runs
at the no-LoRA speed; under compile the first such batch after a LoRA compiles that variant
once (dynamo keeps both graphs), later ones switch for free.

Limits: a LoRA of a rank above ``lora_max_rank`` is refused, as are DoRA, LoRA biases and
layers other than Linear/Conv2d.
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

    @property
    def rank(self) -> int:
        """The highest rank among its layers (0 without layers)."""
        return max((a.shape[0] for a, _, _ in self.layers.values()), default=0)


MIN_SLOT_RANK = 8
"""Smallest slot rank: below it the saving is nil and every step would be a rebuild."""


def slot_rank(rank: int, limit: int) -> int:
    """The slot rank serving a LoRA of ``rank``: the next power of two, at least
    :data:`MIN_SLOT_RANK` (few distinct ranks, so few rebuilds), at most ``limit``
    (``lora_max_rank``)."""
    return min(limit, max(MIN_SLOT_RANK, 1 << max(0, rank - 1).bit_length()))


def slot_count(needed: int, current: int) -> int:
    """Slots after a request needs ``needed``: at least double (few rebuilds), at most
    :data:`SLOT_COUNT`."""
    return min(SLOT_COUNT, max(needed, 2 * current, 1))


class UnetSlots:
    """The fixed adapter slots of one compiled UNet (at most :data:`SLOT_COUNT`)."""

    def __init__(self, unet: Any, rank: int):
        self._unet = unet
        self.rank = rank
        """The highest rank a slot may have (``lora_max_rank``)."""
        self.slot_rank = 0
        """The rank the slots have now: the highest seen, see :func:`slot_rank`."""
        self.names: list[str] = []
        self._active: list[str] = []  # the one list object every slot layer holds
        self.targets: frozenset[str] = frozenset()
        self._modules: dict[str, Any] = {}
        self._content: list[UnetLora | None] = []  # what each slot's tensors hold
        self._scale: list[tuple[int, float]] = []  # (id(content), weight) applied
        self._used: list[int] = []  # last request serial per slot, for LRU reuse
        self._serial = 0
        self.enabled = False
        """Whether the slot layers run (False: the UNet's plain layers, the no-LoRA speed)."""
        # diffusers would pad and convert only the first adapter loaded after
        # enable_lora_hotswap, and refuses to once the UNet is compiled; the slots are
        # prepared here instead, all at once, and staging loads must stay ordinary loads.
        if getattr(unet, "_prepare_lora_hotswap_kwargs", None) is not None:
            unet._prepare_lora_hotswap_kwargs = None

    @property
    def count(self) -> int:
        """How many slots there are now (the most LoRAs one request combined so far)."""
        return len(self.names)

    def cover(self, lora: UnetLora) -> None:
        """Make the slots reach every layer ``lora`` touches, at its rank (rebuilding them,
        a recompile, when either grows)."""
        wanted = self.targets | set(lora.layers)
        rank = max(self.slot_rank, slot_rank(lora.rank, self.rank))
        if wanted == self.targets and rank == self.slot_rank:
            return
        if self.targets:
            log.warning("LoRA hot-swap slots grow to %d layers at rank %d: the UNet recompiles once",
                        len(wanted), rank)
        self._build(wanted, rank, max(1, self.count))

    def _build(self, targets: set[str] | frozenset[str], rank: int, count: int) -> None:
        """(Re)create ``count`` slots of ``rank`` over ``targets``, all empty."""
        from peft import LoraConfig
        from peft.utils.hotswap import prepare_model_for_compiled_hotswap

        config = dict(r=rank, lora_alpha=rank, lora_dropout=0.0, target_modules=sorted(targets))
        names = [f"{SLOT_PREFIX}{i}" for i in range(count)]
        # Creating layers draws from the global RNG; keep generations independent of it.
        with torch.random.fork_rng(devices=[]), _quiet(), torch.no_grad():
            if self.names:
                self._unet.delete_adapters(self.names)
            for name in names:
                self._unet.add_adapter(LoraConfig(**config), adapter_name=name)
            self._unet.set_adapters(names, [1.0] * count)  # all active, for good
            prepare_model_for_compiled_hotswap(self._unet, target_rank=rank,
                                               config=self._unet.peft_config, check_compiled="ignore")
        self.names, self._active = names, list(names)
        self.targets, self.slot_rank = frozenset(targets), rank
        self._modules = {name: self._unet.get_submodule(name) for name in sorted(targets)}
        self.enabled = True  # add_adapter left the new layers on
        self.reactivate()
        self._content = [None] * count
        self._scale = [(-1, 0.0)] * count
        self._used = [0] * count
        self._set_scale(range(count), [None] * count, [0.0] * count)
        for slot in range(count):
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
        self._switch(bool(loras))
        if not loras:
            return  # the plain layers run; what the slots hold stays for the next LoRA batch
        if len(loras) > self.count:
            count = slot_count(len(loras), self.count)
            log.warning("LoRA hot-swap slots grow to %d: the UNet recompiles once", count)
            self._build(self.targets, self.slot_rank, count)
        self._serial += 1
        plan: list[tuple[UnetLora, float] | None] = [None] * self.count
        missing = []
        for lora, weight in loras:
            # A LoRA already in a slot stays there: switching back costs no copy.
            slot = next((i for i, held in enumerate(self._content) if held is lora and plan[i] is None), None)
            if slot is None:
                missing.append((lora, weight))
            else:
                plan[slot] = (lora, weight)
        free = sorted((i for i in range(self.count) if plan[i] is None),
                      key=lambda i: (self._content[i] is not None, self._used[i]))
        for (lora, weight), slot in zip(missing, free):
            self._fill(slot, lora)
            plan[slot] = (lora, weight)
        for slot, entry in enumerate(plan):
            if entry is not None:
                self._used[slot] = self._serial
        self._set_scale(range(self.count), [e[0] if e else None for e in plan],
                        [e[1] if e else 0.0 for e in plan])

    def _switch(self, on: bool) -> None:
        """Run the slot layers (``on``) or only the UNet's own layers: a no-LoRA batch pays
        nothing for the slots. One bool per layer, guarded by dynamo: two cached graphs."""
        if on == self.enabled:
            return
        for module in self._modules.values():
            module._disable_adapters = not on  # peft's flag, without its requires_grad pass
        self.enabled = on

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

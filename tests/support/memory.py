"""What the leak tests count instead of resident memory: adapters, parameters, live objects.

Resident memory (RSS) depends on the allocator, on other threads and on how loaded the
machine is: a soak test bounding it took minutes and still failed on a busy machine. RSS
drift is measured by the benchmark ``python -m bench.soak``. The tests count what a leak
would leave behind instead, exactly, so a single leaked adapter or model fails them on any
machine in a few cycles.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterable
from typing import Any

import torch


def lora_modules(pipe: Any) -> dict[str, torch.nn.Module]:
    """The components LoRAs are loaded into (UNet, text encoders), by name."""
    names = getattr(pipe, "_lora_loadable_modules", ("unet", "text_encoder", "text_encoder_2"))
    modules = {name: getattr(pipe, name, None) for name in names}
    return {name: module for name, module in modules.items() if isinstance(module, torch.nn.Module)}


def parameter_count(pipe: Any) -> int:
    """Parameters (elements) of the LoRA-loadable components: the base model plus any adapters in it."""
    return sum(p.numel() for module in lora_modules(pipe).values() for p in module.parameters())


def adapters_per_component(pipe: Any) -> dict[str, int]:
    """How many peft adapters each LoRA-loadable component holds (0 where none)."""
    return {name: len(getattr(module, "peft_config", None) or {})
            for name, module in lora_modules(pipe).items()}


def live_parameters() -> int:
    """``torch.nn.Parameter`` objects alive in this process (after a full collection).

    Catches adapter or model weights that were taken out of the model but are still
    referenced from somewhere (a cache, a closure, a cycle): they no longer count in the
    model's parameters, but they are still here.
    """
    gc.collect()
    return sum(1 for obj in gc.get_objects() if isinstance(obj, torch.nn.Parameter))


def alive(refs: Iterable[weakref.ref]) -> list[Any]:
    """The objects behind ``refs`` that are still alive after a full collection."""
    gc.collect()
    return [obj for ref in refs if (obj := ref()) is not None]

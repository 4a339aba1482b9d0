"""Loaded checkpoints, least recently used first, within a memory budget.

A request's ``model`` picks a checkpoint; the engine keeps loaded ones here so that
switching back is free while the budget allows, and frees the least recently used one
(weights, derived pipelines, its LoRA adapters) before a switch would exceed it. With
the default budget of 0 only the model in use stays loaded: the old one is freed
*before* the new one loads, so memory never holds two.

A source that is not a base model (an SDXL refiner) is refused before anything is
freed: with the default budget a mistaken ``model`` would otherwise unload the model in
use and make the next request pay for loading it again.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from pixelmill.engine.memory import one_collection
from pixelmill.engine.models import ModelSource, check_base_source

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """One loaded checkpoint: its pipelines and the LoRA adapters resident in it."""

    source: ModelSource
    pipes: Any  # PipelineSet
    loras: Any  # LoraCache
    nbytes: int
    on_close: Callable[[], None] | None = None  # e.g. drop refiners built on this model

    def close(self) -> None:
        if self.on_close is not None:
            self.on_close()
        self.loras.clear()
        self.pipes.close()


def module_bytes(pipe: Any) -> int:
    """Bytes of every parameter and buffer of a pipeline's torch modules."""
    total = 0
    for component in getattr(pipe, "components", {}).values():
        if isinstance(component, torch.nn.Module):
            total += sum(t.numel() * t.element_size() for t in (*component.parameters(), *component.buffers()))
    return total


class ModelCache:
    """Checkpoints kept loaded, LRU, within ``budget_bytes`` (0 = only the one in use)."""

    def __init__(self, budget_bytes: int, load: Callable[[ModelSource], LoadedModel],
                 estimate: Callable[[ModelSource], int]):
        self.budget_bytes = budget_bytes
        self._load = load
        self._estimate = estimate
        self._models: OrderedDict[ModelSource, LoadedModel] = OrderedDict()

    def get(self, source: ModelSource) -> LoadedModel:
        """The loaded model for ``source``, loading it (and freeing others) if needed."""
        model = self._models.get(source)
        if model is not None:
            self._models.move_to_end(source)
            return model
        check_base_source(source)  # InvalidRequest before _make_room evicts anything
        self._make_room(self._estimate(source))
        model = self._load(source)
        self._models[source] = model
        self._make_room(0, keep=source)  # the estimate may have been low
        return model

    @property
    def loaded(self) -> list[ModelSource]:
        """Loaded models, least recently used first."""
        return list(self._models)

    def _make_room(self, incoming: int, keep: ModelSource | None = None) -> None:
        for source in [s for s in self._models if s != keep]:
            used = sum(m.nbytes for m in self._models.values())
            if used + incoming <= self.budget_bytes:
                break
            self.evict(source)

    def evict(self, source: ModelSource) -> None:
        """Free one loaded model's memory."""
        model = self._models.pop(source, None)
        if model is None:
            return
        with one_collection(model.pipes.cfg):  # its parts' closes would each collect
            model.close()
            del model
        log.info("model %s unloaded", source.name)

    def close(self) -> None:
        """Free every loaded model."""
        for source in list(self._models):
            self.evict(source)

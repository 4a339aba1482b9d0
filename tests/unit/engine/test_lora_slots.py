"""Hot-swap slots sized from the LoRAs actually served, and switched off for no-LoRA batches.

The slot mechanism runs without compiling (cheap); images are compared with the ordinary
peft path, as in test_lora_hotswap. Speed is measured by ``python -m bench.gpu`` (the
LoRA rows), not asserted here: timings on a shared CPU are no test.
"""

from __future__ import annotations

import numpy as np

from pixelmill.engine.hotswap import SLOT_COUNT, slot_count, slot_rank
from tests.unit.engine.test_lora_hotswap import _cache, _render, close, models, normal, registry  # noqa: F401


def test_slot_rank_rounds_up_to_a_power_of_two_within_the_limit():
    assert [slot_rank(r, 128) for r in (1, 4, 8, 9, 16, 17, 128)] == [8, 8, 8, 16, 16, 32, 128]
    assert slot_rank(100, 64) == 64 and slot_rank(4, 4) == 4


def test_slot_count_doubles_up_to_the_most_a_request_may_name():
    assert [slot_count(n, c) for n, c in ((1, 0), (2, 1), (3, 2), (5, 2), (5, 4))] == [1, 2, 4, 5, 5]


def test_slots_are_as_many_and_as_wide_as_the_loras_served(models, registry, normal):
    cache = _cache(models, registry, hotswap_rank=128)  # the limit, not the size
    slots = cache._slots
    assert slots.count == 0 and slots.slot_rank == 0  # nothing until the first LoRA
    assert close(_render(cache, ("demo-style", 1.0)), _render(normal, ("demo-style", 1.0)))
    assert (slots.count, slots.slot_rank) == (1, 8)  # the demo LoRA has rank 4: the smallest slot rank
    a = slots._modules[next(iter(slots._modules))].lora_A[slots.names[0]].weight
    assert a.shape[0] == 8  # not 128
    both = (("demo-style", 1.0), ("other-style", -0.7))
    assert close(_render(cache, *both), _render(normal, *both))
    assert slots.count == 2  # grew to the most LoRAs one request combined
    assert close(_render(cache, ("other-style", 0.5)), _render(normal, ("other-style", 0.5)))
    assert slots.count == 2 and slots.count <= SLOT_COUNT


def test_a_batch_without_loras_runs_the_plain_layers(models, registry, normal):
    cache = _cache(models, registry, hotswap_rank=8)
    without = _render(cache)
    _render(cache, ("demo-style", 1.0))
    assert cache._slots.enabled
    assert np.array_equal(_render(cache), without)  # exactly the no-LoRA image
    assert not cache._slots.enabled
    assert all(module.disable_adapters for module in cache._slots._modules.values())
    assert close(_render(cache, ("demo-style", 1.0)), _render(normal, ("demo-style", 1.0)))
    assert cache._slots.enabled


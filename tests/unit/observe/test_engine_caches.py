"""The engine's LoRA and ControlNet caches count their hits and misses for ``/metrics``.

Real caches over the tiny demo model on the CPU; the counts are process-wide
(:data:`~pixelmill.observe.metrics.ENGINE_CACHES`), so each test compares before and after.
"""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest

from pixelmill.core.types import LoraSpec
from pixelmill.engine.adapters import LoraCache
from pixelmill.engine.control import ControlNetCache
from pixelmill.engine.device import select_device
from pixelmill.engine.loader import load_folder
from pixelmill.observe.metrics import ENGINE_CACHES, CacheCollector, build_registry
from pixelmill.registry.models_dir import ModelRegistry


@pytest.fixture(scope="module")
def registry(demo_models):
    registry = ModelRegistry(demo_models)
    registry.refresh()
    return registry


@pytest.fixture(scope="module")
def pipe(demo_models):
    return load_folder(demo_models / "checkpoints" / "demo", select_device("cpu"))


def _delta(before: dict, cache: str) -> tuple[int, int]:
    after = ENGINE_CACHES.counts()
    return tuple(after.get((cache, r), 0) - before.get((cache, r), 0) for r in ("hit", "miss"))


def test_a_lora_is_a_miss_when_loaded_then_a_hit(registry, pipe):
    cache = LoraCache(pipe, "demo", registry, max_count=4, max_bytes=1 << 30)
    before = ENGINE_CACHES.counts()
    cache.activate((LoraSpec(name="demo-style", weight=1.0),))
    assert _delta(before, "lora") == (0, 1)
    cache.activate((LoraSpec(name="demo-style", weight=0.5),))
    cache.activate(())  # no LoRA: no lookup
    assert _delta(before, "lora") == (1, 1)
    cache.clear()


def test_a_controlnet_is_a_miss_when_loaded_then_a_hit(registry, pipe):
    cache = ControlNetCache(registry, select_device("cpu"), capacity=1)
    before = ENGINE_CACHES.counts()
    cache.get(("demo-canny",), pipe.unet.config)
    cache.get(("demo-canny",), pipe.unet.config)
    assert _delta(before, "controlnet") == (1, 1)
    cache.close()


def test_the_collector_shows_the_process_counts():
    ENGINE_CACHES.record("lora", hit=True)
    counts = ENGINE_CACHES.counts()
    text = generate_latest(build_registry(CacheCollector())).decode()
    hits = float(counts[("lora", "hit")])
    assert f'pixelmill_engine_cache_lookups_total{{cache="lora",result="hit"}} {hits}' in text

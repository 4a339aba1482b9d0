"""In-process measurements: the pipeline's own throughput ("the limit") and LoRA switching.

Throughput goes through :meth:`pixelmill.engine.engine.Engine.generate_batch`, i.e. the
exact call the server's worker makes (prompt handling, seeded generators, PNG
encoding included), but with no HTTP, no job store and no thread hop: whatever a
server adds on top shows up as the gap to these numbers.
"""

from __future__ import annotations

import gc
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.stats import median


def prompt(i: int) -> str:
    """A distinct prompt per image, so nothing can be cached between requests."""
    return f"bench image {i}: a lighthouse on a cliff at dusk, oil painting"


@dataclass
class Throughput:
    """Images per second at each batch size tried (median over calls)."""

    per_batch: dict[int, float] = field(default_factory=dict)
    seconds_per_call: dict[int, list[float]] = field(default_factory=dict)

    @property
    def batch1(self) -> float:
        return self.per_batch.get(1, float("nan"))

    @property
    def best_batch(self) -> int:
        return max(self.per_batch, key=self.per_batch.__getitem__)

    @property
    def best(self) -> float:
        return self.per_batch[self.best_batch]

    @property
    def one_image_s(self) -> float:
        """Median wall time of one batch-1 generation: the yardstick for LoRA switches."""
        return median(self.seconds_per_call.get(1, []))


def load_engine(models_dir: Path):
    """A started :class:`Engine` serving the demo model from ``models_dir``."""
    from pixelmill.engine.engine import Engine
    from pixelmill.registry.models_dir import ModelRegistry
    from pixelmill.settings import load_settings

    settings = load_settings(models_dir=models_dir, model="demo", data_dir=models_dir.parent / "inprocess")
    engine = Engine(settings, ModelRegistry(settings.models_dir))
    engine.start()
    return engine


def requests_for(count: int, first: int, size: int, steps: int):
    """``count`` requests with distinct prompts and seeds ``first``, ``first + 1``, …"""
    from pixelmill.core.types import GenerationRequest

    return [GenerationRequest(prompt=prompt(first + i), seed=first + i, width=size, height=size, steps=steps)
            for i in range(count)]


def measure_throughput(engine, *, batches: list[int], min_images: int, min_calls: int,
                       size: int, steps: int) -> Throughput:
    """Time ``generate_batch`` at each batch size: at least ``min_images`` images and
    ``min_calls`` calls per size, each call with fresh prompts and seeds.

    The sizes take turns (each round one call of every size that needs more, in rotating
    order): measured one after the other, a size timed in a fast minute of this drifting
    machine could look best and be chosen as the batch size for the rest of the run.
    """
    result, counter = Throughput(), 10_000
    # Warm-up: the first call pays for lazy initialisation and allocator growth; the
    # largest batch is warmed too so its bigger buffers are not paid inside the timing.
    for warm in sorted({1, max(batches)}):
        engine.generate_batch(requests_for(warm, 0, size, steps))
    calls = {batch: max(min_calls, math.ceil(min_images / batch)) for batch in batches}
    durations: dict[int, list[float]] = {batch: [] for batch in batches}
    for turn in range(max(calls.values())):
        due = [batch for batch in batches if len(durations[batch]) < calls[batch]]
        for batch in due[turn % len(due):] + due[:turn % len(due)]:
            requests = requests_for(batch, counter, size, steps)
            counter += batch
            started = time.perf_counter()
            engine.generate_batch(requests)
            durations[batch].append(time.perf_counter() - started)
    for batch in batches:
        result.seconds_per_call[batch] = durations[batch]
        result.per_batch[batch] = batch / median(durations[batch])
        print(f"  batch {batch}: {result.per_batch[batch]:.3f} images/s "
              f"({calls[batch]} calls, median {median(durations[batch]):.2f} s/call)", flush=True)
    return result


# --- LoRA --------------------------------------------------------------------------------


@dataclass
class LoraTimes:
    """Seconds for pixelmill's adapter cache (``LoraCache.activate``) on the bench model."""

    one_generation_s: float
    first_from_disk_s: float
    from_disk_s: list[float]
    cached_switch_s: list[float]


def write_second_lora(source: Path, target: Path) -> Path:
    """A second, different adapter: the demo LoRA with every tensor scaled by 0.7."""
    from safetensors.torch import load_file, save_file

    tensors = {name: tensor * 0.7 for name, tensor in load_file(str(source)).items()}
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(target))
    return target


def _timed(call) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def measure_lora(models_dir: Path, *, size: int, steps: int, repeats: int) -> LoraTimes:
    """Time pixelmill's LoRA activation: a cache miss (file read + load) and a cache hit.

    Runs through the engine's own per-model :class:`~pixelmill.engine.adapters.LoraCache`,
    the code every request with ``loras`` goes through. A miss is forced by shrinking the
    cache to one adapter and alternating two LoRAs (each activation evicts and re-reads);
    a hit alternates the same two LoRAs, with different weights, with both resident.
    """
    from pixelmill.core.types import GenerationRequest, LoraSpec

    write_second_lora(models_dir / "loras" / "demo-style.safetensors", models_dir / "loras" / "demo-style-b.safetensors")
    engine = load_engine(models_dir)
    engine.registry.refresh()
    loras = engine._models.get(engine.model_for(None)).loras
    a, b = (LoraSpec(name="demo-style", weight=1.0),), (LoraSpec(name="demo-style-b", weight=0.8),)
    first = _timed(lambda: loras.activate(a))
    capacity, loras.max_count = loras.max_count, 1
    disk = [_timed(lambda i=i: loras.activate(b if i % 2 == 0 else a)) for i in range(repeats)]
    loras.max_count = capacity
    loras.activate(a)
    loras.activate(b)  # both resident from here on
    switches = [_timed(lambda i=i: loras.activate(a if i % 2 else b)) for i in range(max(2, repeats * 4))]
    request = GenerationRequest(prompt=prompt(0), width=size, height=size, steps=steps, seed=0, loras=a)
    engine.generate(request)  # warm-up with an adapter active, then time generations with it
    one = median([_timed(lambda: engine.generate(request)) for _ in range(max(1, repeats // 2))])
    assert loras.loads == repeats + 2, "a cached switch read a file"
    engine.unload()
    del engine
    gc.collect()
    return LoraTimes(one, first, disk, switches)

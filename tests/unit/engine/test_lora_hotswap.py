"""LoRA hot-swap under ``--compile`` on the tiny demo model: no recompiles, same images.

The compiled tests use dynamo with the ``eager`` backend: it traces and guards exactly like
inductor does (so a guard change still means a recompile) but skips code generation, which
keeps them affordable on a CPU. ``error_on_recompile`` turns any recompile into an error.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import dataclasses  # noqa: E402
import shutil  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from torch._dynamo.utils import counters  # noqa: E402

from pixelmill.core.types import GenerationRequest, LoraSpec  # noqa: E402
from pixelmill.engine import device as device_module  # noqa: E402
from pixelmill.engine.adapters import LoraCache  # noqa: E402
from pixelmill.engine.device import DeviceConfig, prepare_pipeline, select_device  # noqa: E402
from pixelmill.engine.engine import Engine  # noqa: E402
from pixelmill.engine.hotswap import SLOT_COUNT  # noqa: E402
from pixelmill.engine.loader import load_folder  # noqa: E402
from pixelmill.core.errors import GenerationFailed, InvalidRequest  # noqa: E402
from pixelmill.registry.models_dir import ModelRegistry  # noqa: E402
from pixelmill.settings import Settings  # noqa: E402
from pixelmill.core.policy import MAX_LORAS  # noqa: E402
from tests.support.images import decode, pixels  # noqa: E402

SIZE = 128  # the tiny model's native size, which the engine's warm-up compiles for
TOLERANCE = 2  # of 255: the contract allows it, the demo model actually matches exactly


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The tiny model gains nothing from intra-op threads, and on a busy CPU waiting
    OpenMP threads made single generations take 20 s instead of 0.1 s."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models(demo_models, tmp_path_factory):
    """Demo models plus a second LoRA, an unfit one and one that touches fewer UNet layers."""
    root = tmp_path_factory.mktemp("hotswap-models")
    shutil.copytree(demo_models, root, dirs_exist_ok=True)
    loras = root / "loras"
    tensors = load_file(loras / "demo-style.safetensors")
    up = [k for k in tensors if k.endswith(("up.weight", "lora_B.weight"))]
    save_file({k: v.flip(0).contiguous() if k in up else v for k, v in tensors.items()},
              loras / "other-style.safetensors")
    save_file({k: v[..., :1].contiguous() if k not in up else v for k, v in tensors.items()},
              loras / "unfit.safetensors")
    save_file({k: v for k, v in tensors.items() if "to_out" not in k}, loras / "partial-style.safetensors")
    return root


def _engine(models, tmp_path_factory, **settings) -> Engine:
    engine = Engine(Settings(models_dir=models, model="demo", data_dir=tmp_path_factory.mktemp("data"),
                             **settings), ModelRegistry(models))
    if engine.device.compile:
        engine.device = dataclasses.replace(engine.device, _compile_backend="eager")
    engine.start()
    return engine


@pytest.fixture(scope="module")
def hot(models, tmp_path_factory) -> Engine:
    """A compiled engine: LoRAs are hot-swapped (the mode --compile selects)."""
    torch._dynamo.reset()
    return _engine(models, tmp_path_factory, compile=True, lora_max_rank=8)


@pytest.fixture(scope="module")
def plain(models, tmp_path_factory) -> Engine:
    """The ordinary (uncompiled, peft adapter) path, as the reference for images."""
    return _engine(models, tmp_path_factory)


def image(engine: Engine, *loras: tuple[str, float]) -> np.ndarray:
    request = GenerationRequest(prompt="a cat", width=SIZE, height=SIZE, steps=1, seed=11,
                                loras=tuple(LoraSpec(name=n, weight=w) for n, w in loras))
    return pixels(decode(engine.generate(request).images[0].data))


def close(a: np.ndarray, b: np.ndarray) -> bool:
    return int(np.abs(a - b).max()) <= TOLERANCE


def _warm(engine: Engine) -> None:
    # The first request recompiles (the warm-up ran under inference_mode, requests do not),
    # the first LoRA builds the slots, the first request of two LoRAs grows them, and the
    # first no-LoRA request after a LoRA runs the slots switched off: each may compile, once.
    image(engine)
    image(engine, ("demo-style", 1.0))
    image(engine, ("demo-style", 1.0), ("partial-style", 1.0))
    image(engine)


SWITCHES = [
    (("other-style", 0.5),),  # read from disk for the first time, then swapped in
    (("demo-style", 1.0), ("other-style", -0.7)),
    (),
    (("demo-style", 0.3),),
    (("other-style", 1.0), ("demo-style", 0.0)),
    (("demo-style", 1.3), ("other-style", 1.0)),
]


def test_without_hotswap_the_same_switch_recompiles(models, tmp_path_factory, monkeypatch):
    """The control experiment: same compiled UNet, ordinary adapters, and it recompiles.

    Runs first, before the module's compiled engine exists: ``torch._dynamo.reset()``
    drops every compiled graph of the process.
    """
    monkeypatch.setattr(DeviceConfig, "lora_hotswap", property(lambda self: False))
    torch._dynamo.reset()
    engine = _engine(models, tmp_path_factory, compile=True)
    image(engine)
    with torch._dynamo.config.patch(error_on_recompile=True):
        image(engine)  # a stable graph: repeating a request is fine
        with pytest.raises(GenerationFailed) as caught:
            image(engine, ("demo-style", 1.0))
    assert isinstance(caught.value.__cause__, torch._dynamo.exc.RecompileError)
    engine.unload()
    torch._dynamo.reset()  # the next compiled engine starts from a clean cache


def test_switching_loras_and_weights_never_recompiles(hot):
    _warm(hot)
    model = hot._models.get(hot.model_for(None))
    graphs, loads = counters["stats"]["unique_graphs"], model.loras.loads
    with torch._dynamo.config.patch(error_on_recompile=True):
        for loras in SWITCHES + SWITCHES[:3]:  # and back: slots are reused, not refilled
            image(hot, *loras)
    assert counters["stats"]["unique_graphs"] == graphs
    assert model.loras.loads == loads + 1  # other-style once; switching never re-reads a file


def test_hotswapped_images_match_the_ordinary_path(hot, plain):
    _warm(hot)
    for loras in [(("demo-style", 1.0),), *SWITCHES]:
        assert close(image(hot, *loras), image(plain, *loras)), loras


def test_hotswap_keeps_the_lora_contract(hot, plain):
    _warm(hot)
    none = image(hot)
    assert np.array_equal(image(hot, ("demo-style", 0.0)), none)  # exact: the slot adds 0
    one = image(hot, ("demo-style", 1.0))
    other = image(hot, ("other-style", 1.0))
    both = image(hot, ("demo-style", 1.0), ("other-style", 1.0))
    assert not np.array_equal(one, none)
    assert not np.array_equal(both, one) and not np.array_equal(both, other)
    image(hot, ("demo-style", 1.3), ("other-style", -0.7))
    assert np.array_equal(image(hot), image(plain))  # nothing leaks into the next request


def test_an_unfit_lora_is_refused_without_touching_the_compiled_unet(hot):
    _warm(hot)
    before = image(hot)
    with torch._dynamo.config.patch(error_on_recompile=True):
        with pytest.raises(InvalidRequest) as caught:
            image(hot, ("demo-style", 1.0), ("unfit", 1.0))
        assert caught.value.param == "loras[1].name" and "unfit" in caught.value.message
        assert np.array_equal(image(hot), before)


# --- the slot mechanism without compiling (cheap) ------------------------------------------


@pytest.fixture(scope="module")
def registry(models):
    registry = ModelRegistry(models)
    registry.refresh()
    return registry


def _cache(models, registry, **options) -> LoraCache:
    pipe = load_folder(models / "checkpoints" / "demo", select_device("cpu"))
    options.setdefault("max_count", 8)
    return LoraCache(pipe, "demo", registry, max_bytes=10**9, **options)


def _render(cache: LoraCache, *loras: tuple[str, float]) -> np.ndarray:
    cache.activate(tuple(LoraSpec(name=n, weight=w) for n, w in loras))
    with torch.inference_mode():
        out = cache._pipe(prompt="a cat", num_inference_steps=2, width=64, height=64, guidance_scale=5.0,
                          output_type="np", generator=torch.Generator("cpu").manual_seed(3))
    return np.round(out.images[0] * 255).astype(np.int16)


@pytest.fixture(scope="module")
def normal(models, registry) -> LoraCache:
    return _cache(models, registry)


def test_slots_widen_to_layers_a_later_lora_adds(models, registry, normal):
    cache = _cache(models, registry, hotswap_rank=8)
    assert close(_render(cache, ("partial-style", 1.0)), _render(normal, ("partial-style", 1.0)))
    narrow = cache._slots.targets
    for loras in [(("demo-style", 0.8),), (("partial-style", 1.0), ("demo-style", -0.5)), ()]:
        assert close(_render(cache, *loras), _render(normal, *loras)), loras
    assert cache._slots.targets > narrow
    assert cache._pipe.get_list_adapters()["unet"] == [f"pmslot{i}" for i in range(cache._slots.count)]


def test_evicted_loras_come_back_from_disk_into_a_slot(models, registry, normal):
    cache = _cache(models, registry, hotswap_rank=8, max_count=1)
    _render(cache, ("demo-style", 1.0))
    _render(cache, ("other-style", 1.0))
    assert cache.resident == ["other-style"] and cache.loads == 2
    adapters = cache._pipe.get_list_adapters()
    assert adapters["text_encoder"] == adapters["text_encoder_2"] == ["pm2"]  # pm1 deleted
    assert close(_render(cache, ("demo-style", 1.0)), _render(normal, ("demo-style", 1.0)))


def test_a_lora_above_the_max_rank_is_refused_naming_its_parameter(models, registry, normal):
    cache = _cache(models, registry, hotswap_rank=2)  # the demo LoRA has rank 4
    before = _render(cache)
    with pytest.raises(InvalidRequest) as caught:
        _render(cache, ("demo-style", 1.0))
    assert caught.value.param == "loras[0].name"
    assert "rank 4" in caught.value.message and "lora_max_rank=2" in caught.value.message
    assert not any(cache._pipe.get_list_adapters().values())  # nothing left behind
    assert np.array_equal(_render(cache), before)


def test_slots_cover_every_lora_a_request_may_name():
    assert SLOT_COUNT == MAX_LORAS


def test_settings_reach_the_device_and_hotswap_is_enabled_before_compiling(pipes, monkeypatch, tmp_path):
    engine = Engine(Settings(data_dir=tmp_path, compile=True, lora_max_rank=32), ModelRegistry(tmp_path))
    assert engine.device.lora_max_rank == 32 and engine.device.lora_hotswap
    assert not select_device("cpu", compile=True, offload="sequential").lora_hotswap
    calls = []
    monkeypatch.setattr(type(pipes.base), "enable_lora_hotswap",
                        lambda self, **kw: calls.append(("hotswap", kw)), raising=False)
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: calls.append((type(self).__name__, kw)))
    prepare_pipeline(pipes.base, engine.device)
    static = {"mode": device_module.COMPILE_MODE, "fullgraph": False, "dynamic": False}
    assert calls == [("hotswap", {"target_rank": 32}), ("UNet2DConditionModel", static), ("Decoder", static)]

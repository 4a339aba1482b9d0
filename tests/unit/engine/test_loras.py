"""Per-request LoRAs on the tiny demo model: blending, caching, isolation, refusal, memory."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import shutil  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from pixelmill.core.types import GenerationRequest, LoraSpec  # noqa: E402
from pixelmill.engine.engine import Engine  # noqa: E402
from pixelmill.core.errors import InvalidRequest, NotFound  # noqa: E402
from tests.support.engines import make_engine  # noqa: E402
from tests.support.images import decode, pixels  # noqa: E402
from tests.support.memory import (adapters_per_component, live_parameters,  # noqa: E402
                                  parameter_count)


@pytest.fixture(scope="module")
def models(demo_models, tmp_path_factory):
    """A private copy of the demo models with a second LoRA and an unfit one."""
    root = tmp_path_factory.mktemp("lora-models")
    shutil.copytree(demo_models, root, dirs_exist_ok=True)
    tensors = load_file(root / "loras" / "demo-style.safetensors")
    up = [k for k in tensors if k.endswith(("up.weight", "lora_B.weight"))]
    assert up, "the demo LoRA's format changed"
    save_file({k: v.flip(0).contiguous() if k in up else v for k, v in tensors.items()},
              root / "loras" / "other-style.safetensors")
    # Same module names, but ranks that do not fit the demo UNet's layers.
    save_file({k: v[..., :1].contiguous() if k not in up else v for k, v in tensors.items()},
              root / "loras" / "unfit.safetensors")
    return root


def _engine(models, tmp_path_factory, **settings) -> Engine:
    return make_engine(models, tmp_path_factory, **settings)


@pytest.fixture(scope="module")
def engine(models, tmp_path_factory) -> Engine:
    return _engine(models, tmp_path_factory)


def image(engine: Engine, *loras: tuple[str, float], prompt: str = "a cat") -> np.ndarray:
    request = GenerationRequest(prompt=prompt, width=64, height=64, steps=2, seed=11,
                                loras=tuple(LoraSpec(name=n, weight=w) for n, w in loras))
    return pixels(decode(engine.generate(request).images[0].data))


def test_weight_zero_is_exactly_no_lora(engine):
    assert np.array_equal(image(engine, ("demo-style", 0.0)), image(engine))


def test_weight_one_changes_the_image(engine):
    assert not np.array_equal(image(engine, ("demo-style", 1.0)), image(engine))


def test_two_loras_blend_into_something_else(engine):
    both = image(engine, ("demo-style", 1.0), ("other-style", 1.0))
    assert not np.array_equal(both, image(engine, ("demo-style", 1.0)))
    assert not np.array_equal(both, image(engine, ("other-style", 1.0)))


def test_no_adapter_state_leaks_into_the_next_request(engine, models, tmp_path_factory):
    image(engine, ("demo-style", 1.3), ("other-style", -0.7))
    after = image(engine)
    fresh = image(_engine(models, tmp_path_factory))
    assert np.array_equal(after, fresh)


def test_adapters_leave_the_models_own_parameters_as_they_were(models, tmp_path_factory):
    """peft marks every base parameter requires_grad=False when it adds an adapter. That
    changes no value, but torch's matmul then takes another kernel for non-contiguous inputs
    (a bmm instead of one folded mm; the UNet's proj_in), so a request without LoRAs would
    no longer match a fresh server's bit for bit. Loading, evicting and clearing keep them."""
    engine = _engine(models, tmp_path_factory, lora_cache_size=1)
    image(engine)
    model = engine._models.get(engine.model_for(None))
    pipe = model.pipes.base

    def flags() -> dict[int, bool]:
        return {id(p): p.requires_grad for component in ("unet", "text_encoder", "text_encoder_2")
                for name, p in getattr(pipe, component).named_parameters() if ".lora_" not in name}

    before = flags()
    assert any(before.values())  # else this test would prove nothing
    image(engine, ("demo-style", 1.0))
    image(engine, ("other-style", 1.0))  # evicts demo-style
    assert flags() == before
    model.loras.clear()
    assert flags() == before


def test_cached_adapters_are_not_read_again(engine):
    model = engine._models.get(engine.model_for(None))
    image(engine, ("demo-style", 1.0))
    image(engine, ("other-style", 0.5))
    loads = model.loras.loads
    for weight in (0.2, 0.9, 1.5):
        image(engine, ("demo-style", weight), ("other-style", 1.0))
    assert model.loras.loads == loads


def test_least_recently_used_adapter_is_evicted(models, tmp_path_factory):
    engine = _engine(models, tmp_path_factory, lora_cache_size=1)
    model = engine._models.get(engine.model_for(None))
    image(engine, ("demo-style", 1.0))
    image(engine, ("other-style", 1.0))
    assert model.loras.resident == ["other-style"]
    assert sum(len(v) for v in model.pipes.base.get_list_adapters().values()) == 3  # unet + 2 text encoders
    # The evicted adapter is gone from the model, so its output equals a fresh load's.
    again = image(engine, ("demo-style", 1.0))
    assert np.array_equal(again, image(_engine(models, tmp_path_factory), ("demo-style", 1.0)))


def test_a_lora_that_does_not_fit_is_an_error_and_leaves_nothing_behind(engine):
    before = image(engine)
    with pytest.raises(InvalidRequest) as caught:
        image(engine, ("unfit", 1.0))
    assert caught.value.param == "loras[0].name"
    assert "unfit" in caught.value.message
    assert np.array_equal(image(engine), before)


def test_an_unknown_lora_names_its_parameter(engine):
    with pytest.raises(NotFound) as caught:
        image(engine, ("demo-style", 1.0), ("nope", 1.0))
    assert caught.value.param == "loras[1].name"


def test_adapter_cycling_leaves_only_the_resident_adapter(models, tmp_path_factory):
    """Load/use/evict cycles (a cache of one, two LoRAs in turn) leave exactly one adapter behind.

    Counts what a leak would leave, not RSS (``python -m bench.soak`` measures RSS drift):
    adapters registered in the UNet and text encoders, their parameters, and every
    ``nn.Parameter`` alive in the process, so an evicted adapter that peft keeps, or that
    anything still references, fails here.
    """
    engine = _engine(models, tmp_path_factory, lora_cache_size=1)
    model = engine._models.get(engine.model_for(None))
    pipe = model.pipes.base
    names = ["demo-style", "other-style"]

    def cycle(i: int) -> None:
        engine.generate(GenerationRequest(prompt="a cat", width=64, height=64, steps=1, seed=1,
                                          loras=(LoraSpec(name=names[i % 2], weight=1.0),)))

    base_params = parameter_count(pipe)
    cycle(0)
    with_one, live = parameter_count(pipe), live_parameters()
    assert with_one > base_params  # else the counts below would prove nothing
    for i in range(1, 4):  # each LoRA evicted and loaded again
        cycle(i)
        assert model.loras.resident == [names[i % 2]]
        assert adapters_per_component(pipe) == {"unet": 1, "text_encoder": 1, "text_encoder_2": 1}
        assert parameter_count(pipe) == with_one, f"cycle {i}: adapter parameters were left in the model"
    assert model.loras.loads == 4  # every cycle read its adapter from disk: each one was evicted
    assert live_parameters() == live, "evicted adapters' parameters are still alive"
    model.loras.clear()
    assert adapters_per_component(pipe) == {"unet": 0, "text_encoder": 0, "text_encoder_2": 0}
    assert parameter_count(pipe) == base_params

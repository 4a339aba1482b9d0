"""The CUDA-only QKV fusion really works with this diffusers (checked on CPU), and a LoRA
turns it off only while it is active."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from pixelmill.core.types import LoraSpec  # noqa: E402
from pixelmill.engine.adapters import LoraCache  # noqa: E402
from pixelmill.engine.device import _fuse_qkv, select_device  # noqa: E402
from pixelmill.engine.loader import load_folder  # noqa: E402
from pixelmill.registry.models_dir import ModelRegistry  # noqa: E402


def _image(pipe) -> np.ndarray:
    out = pipe(prompt="a cat", width=64, height=64, num_inference_steps=2, output_type="np",
               generator=torch.Generator("cpu").manual_seed(3))
    return np.asarray(out.images[0])


def test_fusing_qkv_keeps_the_image(demo_models):
    pipe = load_folder(demo_models / "checkpoints" / "demo", select_device("cpu"))
    before = _image(pipe)
    _fuse_qkv(pipe)
    fused = [p for p in pipe.unet.attn_processors.values() if "Fused" in type(p).__name__]
    assert fused, "no attention processor was fused"
    assert np.abs(_image(pipe) - before).max() < 1e-3


# --- LoRAs on a fused UNet: fused again as soon as no LoRA is active ------------------------


@pytest.fixture(scope="module")
def registry(demo_models):
    registry = ModelRegistry(demo_models)
    registry.refresh()
    return registry


def _cache(demo_models, registry, *, fuse: bool, hotswap_rank: int | None) -> LoraCache:
    pipe = load_folder(demo_models / "checkpoints" / "demo", select_device("cpu"))
    if fuse:
        _fuse_qkv(pipe)
    return LoraCache(pipe, "demo", registry, max_count=4, max_bytes=10**9, hotswap_rank=hotswap_rank)


def _render(cache: LoraCache, *loras: tuple[str, float]) -> np.ndarray:
    cache.activate(tuple(LoraSpec(name=name, weight=weight) for name, weight in loras))
    return _image(cache._pipe)


def _structure(pipe) -> dict[str, int]:
    """How the UNet's attention runs: processors by kind, and the linears they read."""
    from diffusers.models.attention_processor import Attention
    from peft.tuners.lora import LoraLayer  # what peft wraps a targeted linear in

    processors = pipe.unet.attn_processors.values()
    blocks = [m for m in pipe.unet.modules() if isinstance(m, Attention)]
    return {
        "fused": sum("Fused" in type(p).__name__ for p in processors),
        "unfused": sum("Fused" not in type(p).__name__ for p in processors),
        "plain fused linears": sum(type(getattr(b, "to_qkv", getattr(b, "to_kv", None))) is torch.nn.Linear
                                   for b in blocks),
        "lora q": sum(isinstance(b.to_q, LoraLayer) for b in blocks),
        "vae fused": sum("Fused" in type(p).__name__ for p in pipe.vae.attn_processors.values()),
    }


@pytest.mark.parametrize("hotswap_rank", [None, 8], ids=["adapters", "hotswap-slots"])
def test_a_batch_without_loras_runs_fused_again_after_a_lora(demo_models, registry, hotswap_rank):
    cache = _cache(demo_models, registry, fuse=True, hotswap_rank=hotswap_rank)
    blocks = len(cache._pipe.unet.attn_processors)
    fused = {"fused": blocks, "unfused": 0, "plain fused linears": blocks}

    def runs_fused() -> bool:
        structure = _structure(cache._pipe)
        return {key: structure[key] for key in fused} == fused and structure["vae fused"] > 0

    before = _render(cache)
    assert runs_fused() and _structure(cache._pipe)["lora q"] == 0

    with_lora = _render(cache, ("demo-style", 1.0))
    during = _structure(cache._pipe)
    assert during["fused"] == 0 and during["unfused"] == blocks  # the LoRA's q/k/v parts run
    assert during["lora q"] > 0 and during["plain fused linears"] == blocks  # peft left to_qkv alone
    assert during["vae fused"] > 0  # no LoRA touches the VAE: it stays fused throughout
    # The LoRA applies exactly as on a UNet that was never fused.
    reference = _cache(demo_models, registry, fuse=False, hotswap_rank=hotswap_rank)
    assert np.array_equal(with_lora, _render(reference, ("demo-style", 1.0)))
    assert np.abs(with_lora - before).max() > 1e-2

    after = _render(cache)
    assert runs_fused() and _structure(cache._pipe)["lora q"] > 0  # fused again, peft layers still in
    assert np.array_equal(after, before)  # the very image of the fused UNet before any LoRA
    assert np.array_equal(_render(cache, ("demo-style", 1.0)), with_lora)  # and back, still exact
    assert np.array_equal(_render(cache, ("demo-style", 0.0)), before)  # weight 0 is no LoRA: fused
    assert cache._fusion.fused


def test_an_unfused_unet_is_left_as_it_is(demo_models, registry):
    cache = _cache(demo_models, registry, fuse=False, hotswap_rank=None)
    assert not cache._fusion.available
    _render(cache, ("demo-style", 1.0))
    _render(cache)
    assert _structure(cache._pipe)["fused"] == 0


def test_switching_fused_and_lora_variants_of_a_compiled_unet_never_recompiles(demo_models, registry):
    """Each variant (fused, no LoRA / unfused, LoRA slots) compiles once; switching between
    them afterwards finds the cached graphs. Dynamo's ``eager`` backend guards exactly like
    inductor without generating code."""
    torch._dynamo.reset()
    cache = _cache(demo_models, registry, fuse=True, hotswap_rank=8)
    cache._pipe.unet.compile(backend="eager", fullgraph=False, dynamic=False)
    try:
        plain, with_lora = _render(cache), _render(cache, ("demo-style", 1.0))
        _render(cache)  # the fused variant again, now with the slot layers wrapped in
        with torch._dynamo.config.patch(error_on_recompile=True):
            for _ in range(2):
                assert np.array_equal(_render(cache, ("demo-style", 1.0)), with_lora)
                assert np.array_equal(_render(cache), plain) and cache._fusion.fused
    finally:
        torch._dynamo.reset()

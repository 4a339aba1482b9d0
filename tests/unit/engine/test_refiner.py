"""The SDXL refiner: shares the base's components, ensemble-of-experts hand-off, cache."""

from __future__ import annotations

import gc
import json
import os
import shutil
import weakref

os.environ["HF_HUB_OFFLINE"] = "1"  # before diffusers/huggingface_hub are imported

import numpy as np
import pytest
import torch

from pixelmill.engine.demo import DEMO_REFINER_NAME
from pixelmill.engine.loader import load_folder
from pixelmill.engine.refiner import RefinerCache, handoff_kwargs, refine
from pixelmill.core.errors import InvalidRequest, NotFound
from pixelmill.registry.models_dir import ModelRegistry

PROMPT = "a lighthouse"


@pytest.fixture(scope="module")
def registry(models_dir):
    registry = ModelRegistry(models_dir)
    registry.refresh()
    return registry


@pytest.fixture(scope="module")
def refiners(registry, cpu):
    cache = RefinerCache(registry, cpu)
    yield cache
    cache.close()


@pytest.fixture(scope="module")
def refiner(refiners, pipes):
    return refiners.get(DEMO_REFINER_NAME, pipes.base)


def _latents(base, seed, *, steps=4, switch_at=0.5):
    return base(prompt=[PROMPT], num_inference_steps=steps, width=64, height=64,
                generator=[torch.Generator().manual_seed(seed)], **handoff_kwargs(switch_at)).images


def _refined(base, refiner, seed, *, steps=4, switch_at=0.5, **kwargs):
    latents = _latents(base, seed, steps=steps, switch_at=switch_at)
    return refine(refiner, latents, text={"prompt": [PROMPT], "negative_prompt": None}, steps=steps,
                  switch_at=switch_at, guidance=5.0,
                  generators=[torch.Generator().manual_seed(seed)], **kwargs)


def test_refiner_shares_the_bases_second_encoder_tokenizer_and_vae(refiner, pipes):
    base = pipes.base
    assert refiner.text_encoder_2 is base.text_encoder_2
    assert refiner.tokenizer_2 is base.tokenizer_2
    assert refiner.vae is base.vae
    assert refiner.text_encoder is None and refiner.tokenizer is None
    assert refiner.unet is not base.unet
    assert refiner.unet.config.cross_attention_dim == base.text_encoder_2.config.hidden_size
    assert refiner.config.requires_aesthetics_score
    assert refiner.unet.dtype == torch.float32 and refiner.unet.device.type == "cpu"


def test_cache_keeps_one_pipeline_per_base_and_name(refiners, refiner, pipes):
    assert refiners.get(DEMO_REFINER_NAME, pipes.base) is refiner


def test_base_plus_refiner_differs_from_base_alone_and_is_deterministic(refiner, pipes):
    alone = pipes.base(prompt=[PROMPT], num_inference_steps=4, width=64, height=64,
                       generator=[torch.Generator().manual_seed(9)], output_type="np").images
    progress = []

    def on_step(pipe, step, timestep, kwargs):
        progress.append((step + 1, pipe.num_timesteps))
        return kwargs

    first = _refined(pipes.base, refiner, 9, callback_on_step_end=on_step)
    assert first.shape == alone.shape == (1, 64, 64, 3) and np.isfinite(first).all()
    assert progress == [(1, 2), (2, 2)]  # the refiner ran the second half of 4 steps
    assert np.abs(first - alone).max() > 0.05
    np.testing.assert_array_equal(_refined(pipes.base, refiner, 9), first)
    assert np.abs(_refined(pipes.base, refiner, 10) - first).max() > 0.05


def test_batched_refinement_matches_one_by_one(refiner, pipes):
    seeds = [4, 5]
    latents = pipes.base(prompt=[PROMPT, "a boat"], num_inference_steps=4, width=64, height=64,
                         generator=[torch.Generator().manual_seed(s) for s in seeds],
                         **handoff_kwargs(0.5)).images
    batch = refine(refiner, latents, text={"prompt": [PROMPT, "a boat"], "negative_prompt": ["blur", "fog"]},
                   steps=4, switch_at=0.5, guidance=5.0, scheduler="euler_a",
                   generators=[torch.Generator().manual_seed(s) for s in seeds])
    alone = refine(refiner, latents[1:], text={"prompt": ["a boat"], "negative_prompt": ["fog"]}, steps=4,
                   switch_at=0.5, guidance=5.0, scheduler="euler_a",
                   generators=[torch.Generator().manual_seed(5)])
    np.testing.assert_allclose(batch[1:], alone, atol=1e-5)
    assert refiner.scheduler.__class__.__name__ == "EulerDiscreteScheduler"  # default restored


def test_base_loras_are_off_in_the_shared_encoder_while_refining(refiner, pipes, models_dir):
    base = pipes.base
    latents = _latents(base, 2)
    plain = refine(refiner, latents, text={"prompt": [PROMPT], "negative_prompt": None}, steps=4, switch_at=0.5,
                   guidance=5.0, generators=[torch.Generator().manual_seed(2)])
    base.load_lora_weights(str(models_dir / "loras"), weight_name="demo-style.safetensors",
                           adapter_name="demo-style")
    try:
        encoded = base.encode_prompt(PROMPT, do_classifier_free_guidance=False)[0]
        with_lora = refine(refiner, latents, text={"prompt": [PROMPT], "negative_prompt": None}, steps=4,
                           switch_at=0.5, guidance=5.0, generators=[torch.Generator().manual_seed(2)])
        np.testing.assert_array_equal(with_lora, plain)
        # ... and back on for the base afterwards.
        torch.testing.assert_close(base.encode_prompt(PROMPT, do_classifier_free_guidance=False)[0],
                                   encoded)
    finally:
        base.unload_lora_weights()


def test_bad_switch_points_are_refused(refiner):
    for value in (0.0, 1.0, 1.5):
        with pytest.raises(InvalidRequest) as err:
            handoff_kwargs(value)
        assert err.value.param == "refiner.switch_at"


def test_unknown_and_unfitting_refiners_are_refused(refiners, pipes):
    with pytest.raises(NotFound) as err:
        refiners.get("nope", pipes.base)
    assert err.value.param == "refiner.name"
    with pytest.raises(InvalidRequest) as err:  # a base model is no refiner
        refiners.get("demo", pipes.base)
    assert err.value.param == "refiner.name" and "cross_attention_dim" in err.value.message


def test_a_refiner_for_another_base_is_refused(models_dir, tmp_path, cpu, pipes):
    target = tmp_path / "checkpoints" / "other-refiner"
    shutil.copytree(models_dir / "checkpoints" / DEMO_REFINER_NAME, target)
    config_path = target / "text_encoder_2" / "config.json"
    config = json.loads(config_path.read_text())
    config["num_hidden_layers"] += 1  # same widths, different encoder: sharing would lie
    config_path.write_text(json.dumps(config))
    registry = ModelRegistry(tmp_path)
    registry.refresh()
    with pytest.raises(InvalidRequest) as err:
        RefinerCache(registry, cpu).get("other-refiner", pipes.base)
    assert err.value.param == "refiner.name" and "num_hidden_layers" in err.value.message


def test_release_and_base_collection_free_the_refiner(registry, cpu, models_dir):
    cache = RefinerCache(registry, cpu, capacity=2)
    base = load_folder(models_dir / "checkpoints" / "demo", cpu)
    unet = weakref.ref(cache.get(DEMO_REFINER_NAME, base).unet)
    cache.release(base)
    gc.collect()
    assert unet() is None
    unet = weakref.ref(cache.get(DEMO_REFINER_NAME, base).unet)
    del base  # the model was unloaded without release(): its refiner goes with it
    gc.collect()
    assert unet() is None

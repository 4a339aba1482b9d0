"""The VAE: which one (--vae, the models directory's vae/, an fp16-safe default), its
precision per device, the tiling threshold, and decoding latents to uint8 on the device.

Precision choices that only a CUDA device can exercise are tested at the decision level
(given a compute capability, which dtype); the decode itself runs on the CPU demo model.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from pixelmill.core.errors import GenerationFailed, ModelUnavailable
from pixelmill.core.types import GenerationRequest
from pixelmill.engine import vae
from pixelmill.engine.device import DeviceConfig, pick_dtype
from pixelmill.engine.vae import (bf16_capable, choose_vae, decode_dtype, decode_to_uint8, memory_mode,
                                  to_uint8)


def vae_folder(root, name, *, force_upcast=None):
    folder = root / name
    folder.mkdir(parents=True)
    config = {"_class_name": "AutoencoderKL"}
    if force_upcast is not None:
        config["force_upcast"] = force_upcast
    (folder / "config.json").write_text(json.dumps(config))
    return folder


# --- which VAE ---------------------------------------------------------------------------------


def test_no_setting_and_no_vae_folder_keeps_each_models_own(tmp_path):
    assert choose_vae(None, tmp_path) is None
    vae_folder(tmp_path / "vae", "some-other-vae")  # not fp16-safe: not a default
    assert choose_vae(None, tmp_path) is None


def test_an_fp16_fix_vae_in_the_models_directory_is_the_default(tmp_path):
    vae_folder(tmp_path / "vae", "anime-vae")
    folder = vae_folder(tmp_path / "vae", "sdxl-vae-fp16-fix")
    choice = choose_vae(None, tmp_path)
    assert choice.source == str(folder) and choice.fp16_safe and choice.origin == "models_dir"


def test_the_setting_names_a_folder_a_vae_name_or_a_hub_id(tmp_path):
    plain = vae_folder(tmp_path / "vae", "anime-vae")
    fixed = vae_folder(tmp_path / "elsewhere", "my-vae", force_upcast=False)
    vae_folder(tmp_path / "vae", "sdxl-vae-fp16-fix")  # an explicit choice wins over the default
    by_name = choose_vae("anime-vae", tmp_path)
    assert by_name.source == str(plain) and not by_name.fp16_safe and by_name.origin == "setting"
    by_path = choose_vae(str(fixed), tmp_path)
    assert by_path.source == str(fixed) and by_path.fp16_safe  # its config says no upcast
    hub = choose_vae("madebyollin/sdxl-vae-fp16-fix", tmp_path)
    assert hub.source == "madebyollin/sdxl-vae-fp16-fix" and hub.fp16_safe
    assert not choose_vae("stabilityai/sdxl-vae", tmp_path).fp16_safe


@pytest.mark.parametrize("setting", ["missing-vae", "./nowhere/at/all", "a/b/c"])
def test_a_vae_setting_naming_nothing_is_refused(tmp_path, setting):
    with pytest.raises(ModelUnavailable, match="--vae"):
        choose_vae(setting, tmp_path)


# --- which precision ---------------------------------------------------------------------------


@pytest.mark.parametrize(("capability", "expected"), [(None, False), ((7, 5), False), ((8, 0), True),
                                                      ((8, 9), True), ((9, 0), True)])
def test_bf16_from_the_compute_capability(capability, expected):
    assert bf16_capable(capability) is expected


@pytest.mark.parametrize(("dtype", "fp16_safe", "bf16", "expected"), [
    (torch.float32, False, False, torch.float32),   # CPU: fp32 everywhere
    (torch.float32, True, True, torch.float32),
    (torch.float16, True, False, torch.float16),    # fp16-fix VAE: no upcast
    (torch.float16, False, True, torch.bfloat16),   # stock VAE, Ampere+: bf16 (fp32's range)
    (torch.float16, False, False, torch.float32),   # stock VAE, Turing/MPS: fp32 upcast
    (torch.bfloat16, False, True, torch.bfloat16),  # --precision bf16
])
def test_decode_dtype(dtype, fp16_safe, bf16, expected):
    assert decode_dtype(dtype, fp16_safe=fp16_safe, bf16=bf16) == expected
    config = DeviceConfig(device="cuda", dtype=dtype, bf16=bf16, vae_fp16_safe=fp16_safe)
    assert config.vae_dtype == expected


def test_pipeline_precision_per_device():
    assert pick_dtype("cpu", "bf16", bf16=False) == torch.float32
    assert pick_dtype("cuda", "auto", bf16=True) == torch.float16
    assert pick_dtype("cuda", "bf16", bf16=True) == torch.bfloat16
    assert pick_dtype("mps", "auto", bf16=False) == torch.float16
    with pytest.raises(ModelUnavailable, match="compute capability"):
        pick_dtype("cuda:0", "bf16", bf16=False)
    with pytest.raises(ModelUnavailable):
        pick_dtype("cuda", "fp8", bf16=True)


# --- tiling and slicing ---------------------------------------------------------------------


def test_tiling_and_slicing_switch_on_above_the_pixel_budget():
    budget = 1536 * 1536
    assert memory_mode(1536, 1536, 1, budget) == (False, False)
    assert memory_mode(1536, 1544, 1, budget) == (True, False)
    assert memory_mode(2048, 2048, 1, budget) == (True, False)
    assert memory_mode(1024, 1024, 2, budget) == (False, False)  # 2.1 MP together
    assert memory_mode(1024, 1024, 4, budget) == (False, True)   # 4.2 MP together
    assert memory_mode(2048, 2048, 4, budget) == (True, True)
    assert memory_mode(64, 64, 1, budget, tiling=True, slicing=True) == (True, True)  # forced by settings


def test_the_setting_reaches_the_device_config(tmp_path):
    from pixelmill.engine.engine import Engine
    from pixelmill.registry.models_dir import ModelRegistry
    from pixelmill.settings import Settings

    folder = vae_folder(tmp_path / "models" / "vae", "sdxl-vae-fp16-fix")
    engine = Engine(Settings(data_dir=tmp_path / "data", models_dir=tmp_path / "models",
                             vae_tile_above_pixels=4096), ModelRegistry(tmp_path / "models"))
    assert engine.device.vae_path == str(folder) and engine.device.vae_fp16_safe
    assert engine.device.vae_tile_above_pixels == 4096


# --- decoding on the demo model -------------------------------------------------------------------


def test_decode_to_uint8_matches_the_pipelines_own_decoding(pipes):
    pipe = pipes.base
    kwargs = dict(prompt="a red square", num_inference_steps=2, width=64, height=64, guidance_scale=5.0)
    latents = pipe(**kwargs, output_type="latent", generator=torch.Generator("cpu").manual_seed(3)).images
    floats = pipe(**kwargs, output_type="np", generator=torch.Generator("cpu").manual_seed(3)).images
    pixels = decode_to_uint8(pipe, latents, dtype=torch.float32, budget_pixels=1 << 30)
    assert pixels.dtype == np.uint8 and pixels.shape == (1, 64, 64, 3)
    reference = (np.clip(floats, 0, 1) * 255).round().astype(np.uint8)
    assert np.abs(pixels.astype(int) - reference.astype(int)).max() <= 1
    assert np.array_equal(to_uint8(floats), reference)


def test_decode_tiles_above_the_budget_and_refuses_nan(pipes):
    pipe = pipes.base
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator("cpu").manual_seed(0))
    decode_to_uint8(pipe, latents, dtype=torch.float32, budget_pixels=64 * 64 - 1)
    assert pipe.vae.use_tiling and pipe.vae.use_slicing
    decode_to_uint8(pipe, latents, dtype=torch.float32, budget_pixels=1 << 30)
    assert not pipe.vae.use_tiling and not pipe.vae.use_slicing
    latents[0, 0, 0, 0] = float("nan")
    with pytest.raises(GenerationFailed, match="NaN"):
        decode_to_uint8(pipe, latents, dtype=torch.float32, budget_pixels=1 << 30)


def test_the_engine_uses_a_vae_found_in_the_models_directory(demo_models, tmp_path):
    """A darkened copy of the demo VAE, named like an fp16-fix VAE, changes the images."""
    from pixelmill.engine.engine import Engine
    from pixelmill.registry.models_dir import ModelRegistry
    from pixelmill.settings import Settings
    from tests.support.images import decode as open_image

    models = tmp_path / "models"
    shutil.copytree(demo_models / "checkpoints", models / "checkpoints")
    fixed = models / "vae" / "sdxl-vae-fp16-fix"
    shutil.copytree(demo_models / "checkpoints" / "demo" / "vae", fixed)
    weights = fixed / "diffusion_pytorch_model.safetensors"
    tensors = load_file(weights)
    tensors["decoder.conv_out.bias"] = tensors["decoder.conv_out.bias"] - 1.0  # darker output
    save_file(tensors, weights)

    def mean_brightness(models_dir, data) -> float:
        engine = Engine(Settings(models_dir=models_dir, model="demo", data_dir=data), ModelRegistry(models_dir))
        engine.start()
        request = GenerationRequest(prompt="a lamp", width=64, height=64, steps=2, seed=5)
        image = open_image(engine.generate(request).images[0].data)
        return float(np.asarray(image).mean()), engine

    plain, _ = mean_brightness(demo_models, tmp_path / "d1")
    darker, engine = mean_brightness(models, tmp_path / "d2")
    assert engine.device.vae_path == str(fixed)
    assert darker < plain - 20


def test_pixels_converts_float_output_of_pipelines_that_decode_themselves():
    floats = np.array([[[[0.0, 0.5, 1.2]]]], dtype=np.float32)
    assert vae.pixels(object(), floats, None).tolist() == [[[[0, 128, 255]]]]
    with pytest.raises(GenerationFailed):
        vae.pixels(object(), np.full((1, 1, 1, 3), np.nan, dtype=np.float32), None)
    assert vae.to_pil(vae.pixels(object(), floats, None))[0].size == (1, 1)


"""Kohya and BFL-format FLUX.1 LoRAs checked against FLUX bases from headers alone.

The LoRAs are written as trainers write them (tests/support/flux_lora.py) over the demo
transformer's shapes; a BFL-layout single-file base is written with BFL's fused names. Nothing
here loads a model (the engine test loads one: tests/unit/engine/test_flux_kohya_lora.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from pixelmill.core.errors import InvalidRequest
from pixelmill.registry.lora_check import check_fits, compatible_bases, inspect_lora
from pixelmill.registry.models_dir import ModelKind
from tests.support.family_demo import family_models  # noqa: F401
from tests.support.flux_lora import fused_shapes, write_flux_lora
from tests.support.registry import private_copy, refreshed_registry

TRANSFORMER = "checkpoints/demo-flux-schnell/transformer/diffusion_pytorch_model.safetensors"


@pytest.fixture()
def models(family_models, tmp_path) -> Path:  # noqa: F811
    return private_copy(family_models, tmp_path)



@pytest.mark.parametrize(("style", "first_key"), [
    ("kohya", "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"),
    ("bfl", "diffusion_model.double_blocks.0.img_attn.qkv.lora_down.weight"),
])
def test_flux_loras_in_bfl_names_fit_flux_models_only(models, style, first_key):
    shapes = fused_shapes(models / TRANSFORMER, single=True)
    path = write_flux_lora(models / "loras" / f"flux-{style}.safetensors", shapes, style=style)
    info = inspect_lora(path)
    assert first_key in {t.key for t in info.targets}
    assert info.format == style and info.family == "flux" and info.components == ("transformer",)
    assert len(info.targets) == len(shapes) and info.rank == 4
    assert compatible_bases(path, refreshed_registry(models)) == ["demo-flux", "demo-flux-schnell"]


def test_a_fused_module_of_the_wrong_size_is_refused_naming_the_tensor(models):
    shapes = fused_shapes(models / TRANSFORMER)
    out, inp = shapes["double_blocks.0.img_attn.qkv"]
    shapes["double_blocks.0.img_attn.qkv"] = (out * 2 // 3, inp)  # q and k only: not this model's qkv
    path = write_flux_lora(models / "loras" / "bad.safetensors", shapes)
    base = refreshed_registry(models).find(ModelKind.checkpoint, "demo-flux")
    with pytest.raises(InvalidRequest) as caught:
        check_fits(path, base)
    assert "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight" in caught.value.message
    assert "does not fit checkpoint 'demo-flux'" in caught.value.message


def test_an_unknown_bfl_module_is_refused_naming_it(models):
    shapes = fused_shapes(models / TRANSFORMER) | {"double_blocks.9.img_attn.qkv": (96, 32)}  # 1 double block
    path = write_flux_lora(models / "loras" / "deep.safetensors", shapes)
    with pytest.raises(InvalidRequest, match="lora_unet_double_blocks_9_img_attn_qkv.lora_down.weight"):
        check_fits(path, refreshed_registry(models).find(ModelKind.checkpoint, "demo-flux"))


def test_a_bfl_layout_single_file_base_takes_kohya_and_diffusers_loras(models):
    """A FLUX.1 transformer file in BFL's layout (as black-forest-labs ships it): the kohya
    LoRA matches its names, the diffusers/peft demo LoRA the split names derived from them."""
    shapes = fused_shapes(models / TRANSFORMER, single=True)
    extra = {"single_blocks.0.modulation.lin": (96, 32), "double_blocks.0.img_mod.lin": (192, 32),
             "double_blocks.0.txt_mod.lin": (192, 32), "double_blocks.0.txt_mlp.0": (128, 32),
             "double_blocks.0.txt_mlp.2": (32, 128), "img_in": (32, 64), "txt_in": (32, 32)}
    tensors = {f"{m}.weight": np.zeros(s, dtype=np.float16) for m, s in (shapes | extra).items()}
    save_file(tensors, str(models / "checkpoints" / "flux-bfl.safetensors"))
    kohya = write_flux_lora(models / "loras" / "k.safetensors", shapes)
    registry = refreshed_registry(models)
    assert compatible_bases(kohya, registry) == ["demo-flux", "demo-flux-schnell", "flux-bfl"]
    peft = inspect_lora(models / "loras" / "demo-flux-style.safetensors")
    assert peft.format == "peft" and peft.family == "flux"
    assert "flux-bfl" in compatible_bases(peft.path, registry)


def test_listing_reports_format_and_family(models):
    from pixelmill.api.models import LoraPublic

    path = write_flux_lora(models / "loras" / "flux-kohya.safetensors", fused_shapes(models / TRANSFORMER))
    registry = refreshed_registry(models)
    listed = LoraPublic.describe(registry.find(ModelKind.lora, "flux-kohya"), registry)
    assert (listed.format, listed.family, listed.valid) == ("kohya", "flux", True)
    assert listed.compatible_with == ["demo-flux", "demo-flux-schnell"] and path.is_file()
    assert LoraPublic.describe(registry.find(ModelKind.lora, "demo-style"), registry).family == "sdxl"


def test_kohya_flux_text_encoder_halves_fit_the_clip_encoder(models):
    from safetensors.numpy import load_file

    path = write_flux_lora(models / "loras" / "with-te.safetensors", fused_shapes(models / TRANSFORMER))
    tensors = load_file(path)
    clip = "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"
    tensors[f"{clip}.lora_down.weight"] = np.zeros((4, 32), dtype=np.float32)  # the demo CLIP-L is 32 wide
    tensors[f"{clip}.lora_up.weight"] = np.zeros((32, 4), dtype=np.float32)
    save_file(tensors, str(path))
    info = inspect_lora(path)
    assert info.components == ("text_encoder", "transformer") and info.family == "flux"
    assert compatible_bases(path, refreshed_registry(models)) == ["demo-flux", "demo-flux-schnell"]


@pytest.mark.parametrize("key", [
    "double_blocks.0.img_attn.qkv.lora_A.weight",  # BFL control LoRA names: diffusers would drop them
    "diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight",
])
def test_bfl_names_with_peft_halves_are_refused(models, key):
    path = models / "loras" / "bfl-peft.safetensors"
    save_file({key: np.zeros((4, 32), dtype=np.float32),
               key.replace("lora_A", "lora_B"): np.zeros((96, 4), dtype=np.float32)}, str(path))
    with pytest.raises(InvalidRequest, match="not a LoRA tensor of a supported format") as caught:
        inspect_lora(path)
    assert caught.value.param == "file"

"""A kohya-format FLUX.1 LoRA through the real engine (diffusers' kohya converter, peft).

The LoRA adapts the demo transformer's double block (fused ``img_attn.qkv`` and ``txt_attn.qkv``
that diffusers' converter splits into ``to_q/to_k/to_v``, plus projections and MLPs), written in
kohya's names with an ``alpha``. Single-block ``linear1`` is left out: diffusers' converter splits
it at FLUX.1's real widths (3072 x 3 + 12288), which the tiny demo transformer does not have.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from pixelmill.core.types import LoraSpec
from pixelmill.registry.lora_check import check_fits
from tests.support.family_demo import family_models, family_request, family_settings  # noqa: F401
from tests.support.flux_lora import fused_shapes, write_flux_lora
from tests.support.images import decode, pixels

TRANSFORMER = "checkpoints/demo-flux-schnell/transformer/diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def kohya_engine(family_models, tmp_path_factory):  # noqa: F811
    from pixelmill.engine.engine import Engine
    from pixelmill.registry.models_dir import ModelKind, ModelRegistry

    root = tmp_path_factory.mktemp("kohya") / "models"
    shutil.copytree(family_models, root, ignore=shutil.ignore_patterns("demo-sd3*", "demo-refiner"))
    write_flux_lora(root / "loras" / "flux-kohya.safetensors", fused_shapes(root / TRANSFORMER), seed=3)
    settings = family_settings(root, tmp_path_factory.mktemp("data"))
    registry = ModelRegistry(settings.models_dir)
    registry.refresh()
    # The header check passes it for both FLUX variants, as POST /v1/loras would.
    for model in ("demo-flux-schnell", "demo-flux"):
        check_fits(root / "loras" / "flux-kohya.safetensors", registry.find(ModelKind.checkpoint, model))
    engine = Engine(settings, registry)
    engine.start()
    yield engine
    engine.unload()


def image(engine, model, **fields) -> np.ndarray:
    return pixels(decode(engine.generate(family_request(model, **fields)).images[0].data))


@pytest.mark.parametrize("model", ["demo-flux-schnell", "demo-flux"])
def test_kohya_flux_lora_weight_zero_is_none_and_one_changes_the_image(kohya_engine, model):
    plain = image(kohya_engine, model)
    zero = image(kohya_engine, model, loras=(LoraSpec(name="flux-kohya", weight=0.0),))
    one = image(kohya_engine, model, loras=(LoraSpec(name="flux-kohya", weight=1.0),))
    assert np.array_equal(plain, zero)
    assert not np.array_equal(plain, one)
    assert np.abs(plain.astype(int) - one.astype(int)).mean() > 1  # a real change, not rounding
    assert np.array_equal(one, image(kohya_engine, model, loras=(LoraSpec(name="flux-kohya", weight=1.0),)))
    assert np.array_equal(plain, image(kohya_engine, model))  # disabled again afterwards

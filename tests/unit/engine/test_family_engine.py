"""FLUX.1 (dev, schnell) and SD3.5 on their demo models through the real engine.

Per family: same seed same image, batched equals alone, LoRA weight 0 equals none (and
weight 1 changes it), img2img uses image and strength, inpaint keeps unmasked pixels,
progress and cancel through the step callback, no previews, and memory bounded over
repeated family switches (live ``nn.Parameter`` counts, not RSS).
"""

from __future__ import annotations

import numpy as np
import pytest

from pixelmill.core.errors import GenerationCanceled, InvalidRequest
from pixelmill.core.types import LoraSpec, Mode
from pixelmill.images.codecs import reencode_png
from tests.support.family_demo import family_engine, family_models, family_request, started_engine  # noqa: F401
from tests.support.images import assert_same_image, decode, gradient, pixels
from tests.support.memory import live_parameters

FAMILIES = {"demo-flux-schnell": "flux/schnell", "demo-flux": "flux/dev", "demo-sd3": "sd3/medium"}
LORAS = {"demo-flux-schnell": "demo-flux-style", "demo-flux": "demo-flux-style", "demo-sd3": "demo-sd3-style"}
MODELS = list(FAMILIES)


def image(engine, model, **fields) -> np.ndarray:
    return pixels(decode(engine.generate(family_request(model, **fields)).images[0].data))


@pytest.mark.parametrize("model", MODELS)
def test_the_family_is_read_from_the_loaded_pipeline(family_engine, model):
    loaded = family_engine._models.get(family_engine.model_for(model))
    assert loaded.pipes.family.key == FAMILIES[model]
    assert loaded.pipes.native_size == (128, 128)  # the demo's VAE / transformer sample size x 8


@pytest.mark.parametrize("model", MODELS)
def test_same_seed_same_image_and_another_seed_another(family_engine, model):
    first, again = image(family_engine, model), image(family_engine, model)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, image(family_engine, model, seed=8))
    assert first.std() > 1  # not a blank image


@pytest.mark.parametrize("model", MODELS)
def test_a_batch_makes_the_same_images_as_separate_calls(family_engine, model):
    requests = [family_request(model, prompt="a red cube", seed=11, n=2), family_request(model, prompt="a blue sky", seed=3)]
    for request, result in zip(requests, family_engine.generate_batch(requests)):
        alone = family_engine.generate(request)
        assert [i.seed for i in result.images] == [i.seed for i in alone.images]
        for a, b in zip(result.images, alone.images):
            assert_same_image(decode(a.data), decode(b.data))


@pytest.mark.parametrize("model", MODELS)
def test_lora_weight_zero_is_no_lora_and_one_changes_the_image(family_engine, model):
    plain = image(family_engine, model)
    zero = image(family_engine, model, loras=(LoraSpec(name=LORAS[model], weight=0.0),))
    one = image(family_engine, model, loras=(LoraSpec(name=LORAS[model], weight=1.0),))
    assert np.array_equal(plain, zero)
    assert not np.array_equal(plain, one)
    assert np.array_equal(plain, image(family_engine, model))  # disabled again afterwards


def test_a_lora_of_another_family_is_refused_naming_it(family_engine):
    with pytest.raises(InvalidRequest) as caught:
        image(family_engine, "demo-sd3", loras=(LoraSpec(name="demo-flux-style", weight=1.0),))
    assert caught.value.param == "loras[0].name"


@pytest.mark.parametrize("model", MODELS)
def test_img2img_uses_the_image_and_the_strength(family_engine, model):
    def run(picture, strength):
        return image(family_engine, model, mode=Mode.img2img, init_image=reencode_png(picture), strength=strength,
                     steps=4)

    light, dark = gradient(64, 64), gradient(64, 64).point(lambda v: v // 4)
    assert not np.array_equal(run(light, 0.5), run(dark, 0.5))
    assert not np.array_equal(run(light, 0.5), run(light, 1.0))
    assert np.array_equal(run(light, 0.5), run(light, 0.5))


@pytest.mark.parametrize("model", MODELS)
def test_inpaint_keeps_the_unmasked_pixels(family_engine, model):
    from PIL import Image

    source = gradient(64, 64)
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[:, :32] = 255  # repaint the left half
    out = image(family_engine, model, mode=Mode.inpaint, init_image=reencode_png(source),
                mask_image=reencode_png(Image.fromarray(mask, "L")), strength=0.9, mask_blur=0)
    assert np.array_equal(out[:, 32:], pixels(source)[:, 32:])
    assert not np.array_equal(out[:, :32], pixels(source)[:, :32])


@pytest.mark.parametrize("model", ["demo-flux", "demo-sd3"])
def test_progress_every_step_and_cancel_between_steps(family_engine, model):
    steps, previews = [], []
    family_engine.generate(family_request(model, steps=3), on_progress=lambda s, t: steps.append((s, t)),
                           on_preview=lambda *args: previews.append(args))
    assert steps == [(1, 3), (2, 3), (3, 3)]
    assert previews == []  # packed / 16-channel latents: no preview rather than a wrong one
    seen = []
    with pytest.raises(GenerationCanceled):
        family_engine.generate(family_request(model, steps=10), on_progress=lambda s, t: seen.append(s),
                               is_canceled=lambda: len(seen) >= 2)
    assert seen == [1, 2]


def test_the_engine_refuses_what_a_stored_request_asks_of_the_wrong_family(family_engine):
    # A job resolved by an API host that could not see the files (no family) still fails cleanly.
    with pytest.raises(InvalidRequest) as caught:
        family_engine.generate(family_request("demo-flux", negative_prompt="blurry"))
    assert caught.value.param == "negative_prompt"


def test_switching_families_frees_the_previous_model(family_models, tmp_path):
    """Default budget (0): one model loaded at a time; another SDXL -> FLUX -> SD3 round
    leaves the number of live parameters where the first round left it (any per-switch
    leak adds parameters, so one more round shows it; more rounds only cost loads)."""
    engine = started_engine(family_models, tmp_path)
    cycle = ["demo", "demo-flux-schnell", "demo-sd3"]

    def round_trip():
        for model in cycle:
            engine.generate(family_request(model, steps=1))
            assert engine.loaded_models == [model]

    try:
        round_trip()
        after_one = live_parameters()
        round_trip()
        assert live_parameters() == after_one
    finally:
        engine.unload()


def test_t5_quantization_without_cuda_or_bitsandbytes_names_the_setting(family_models):
    from pixelmill.core.errors import ModelUnavailable
    from pixelmill.engine.device import select_device
    from pixelmill.engine.families import TextEncoderOptions
    from pixelmill.engine.loader import load_folder

    with pytest.raises(ModelUnavailable) as caught:
        load_folder(family_models / "checkpoints" / "demo-flux", select_device("cpu"),
                    TextEncoderOptions(quantization="8bit"))
    assert caught.value.param == "text_encoder_quantization"
    assert "text_encoder_quantization=8bit" in caught.value.message


def test_family_loras_are_checked_from_their_headers(family_models):
    from pixelmill.registry.lora_check import compatible_bases, inspect_lora
    from pixelmill.registry.models_dir import ModelRegistry

    registry = ModelRegistry(family_models)
    registry.refresh()
    assert inspect_lora(family_models / "loras" / "demo-flux-style.safetensors").components == ("transformer",)
    assert compatible_bases(family_models / "loras" / "demo-flux-style.safetensors", registry) == [
        "demo-flux", "demo-flux-schnell"]
    assert compatible_bases(family_models / "loras" / "demo-sd3-style.safetensors", registry) == ["demo-sd3"]


def test_a_flux_transformer_file_loads_with_its_base_folder(family_models, tmp_path):
    """The single-file path: a transformer-only .safetensors (here in diffusers layout) plus the
    other components from ``<name>.base/`` make the same pipeline as the folder."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from pixelmill.engine.device import select_device
    from pixelmill.engine.loader import load_folder, load_single_file
    from pixelmill.registry.families import detect_file

    folder = family_models / "checkpoints" / "demo-flux-schnell"
    save_file(load_file(folder / "transformer" / "diffusion_pytorch_model.safetensors"),
              str(tmp_path / "myflux.safetensors"))
    shutil.copytree(folder, tmp_path / "myflux.base")
    assert detect_file(tmp_path / "myflux.safetensors").key == "flux/schnell"
    cpu = select_device("cpu")

    def render(pipe):
        pipe.set_progress_bar_config(disable=True)
        return pipe(prompt="a cat", width=64, height=64, num_inference_steps=2, output_type="np",
                    generator=torch.Generator().manual_seed(1)).images

    single = load_single_file(tmp_path / "myflux.safetensors", cpu)
    assert type(single).__name__ == "FluxPipeline"
    assert np.array_equal(render(single), render(load_folder(folder, cpu)))

"""ControlNets and the refiner through the engine, on the tiny demo models."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from pixelmill.core.types import ControlSpec, GenerationRequest, Mode, Preprocess, RefinerSpec  # noqa: E402
from pixelmill.engine.engine import Engine  # noqa: E402
from pixelmill.core.errors import InvalidRequest, NotFound  # noqa: E402
from pixelmill.settings import Settings  # noqa: E402
from pixelmill.core.policy import prepare_request  # noqa: E402
from tests.support.images import decode, gradient, png_bytes, pixels  # noqa: E402


def _shapes(size: int = 64) -> bytes:
    image = Image.new("RGB", (size, size), "black")
    image.paste((255, 255, 255), (16, 16, 48, 48))
    return png_bytes(image)


def run(engine: Engine, settings: Settings, **fields):
    request = GenerationRequest(**({"prompt": "a cat", "width": 64, "height": 64, "steps": 2, "seed": 3} | fields))
    return engine.generate(prepare_request(request, settings))


def image_of(result) -> np.ndarray:
    return pixels(decode(result.images[0].data))


def control(**fields) -> ControlSpec:
    return ControlSpec(**({"name": "demo-canny", "image": _shapes()} | fields))


def test_controlnet_scale_zero_is_exactly_no_controlnet(engine, settings):
    plain = image_of(run(engine, settings))
    assert np.array_equal(image_of(run(engine, settings, controlnets=(control(scale=0.0),))), plain)


def test_controlnet_scale_one_changes_the_image(engine, settings):
    plain = image_of(run(engine, settings))
    assert not np.array_equal(image_of(run(engine, settings, controlnets=(control(scale=1.0),))), plain)


def test_two_controlnets_and_the_preprocessed_images_come_back(engine, settings):
    result = run(engine, settings, return_control_images=True, controlnets=(
        control(preprocess=Preprocess.canny), control(preprocess=Preprocess.invert, scale=0.5)))
    assert len(result.control_images) == 2
    edges, inverted = (pixels(decode(img.data)) for img in result.control_images)
    assert edges.shape == inverted.shape == (64, 64, 3)
    assert edges[32, 32].tolist() == [0, 0, 0] and edges.max() == 255  # flat inside, edges on the border
    assert inverted[32, 32].tolist() == [0, 0, 0] and inverted[0, 0].tolist() == [255, 255, 255]


@pytest.mark.parametrize("mode", [Mode.img2img, Mode.inpaint])
def test_controlnet_works_with_img2img_and_inpaint(engine, settings, mode):
    init = png_bytes(gradient(64, 64))
    mask = png_bytes(Image.new("L", (64, 64), 255)) if mode is Mode.inpaint else None
    fields = {"mode": mode, "init_image": init, "mask_image": mask, "strength": 0.9}
    base = image_of(run(engine, settings, **fields))
    assert np.array_equal(image_of(run(engine, settings, controlnets=(control(scale=0.0),), **fields)), base)
    assert not np.array_equal(image_of(run(engine, settings, controlnets=(control(),), **fields)), base)


def test_unknown_controlnet_names_its_parameter(engine, settings):
    with pytest.raises(NotFound) as caught:
        run(engine, settings, controlnets=(control(), control(name="missing")))
    assert caught.value.param == "controlnets[1].name"


def test_refiner_changes_the_image_and_is_deterministic(engine, settings):
    plain = image_of(run(engine, settings, steps=4))
    refined = image_of(run(engine, settings, steps=4, refiner=RefinerSpec(name="demo-refiner", switch_at=0.5)))
    again = image_of(run(engine, settings, steps=4, refiner=RefinerSpec(name="demo-refiner", switch_at=0.5)))
    other_seed = image_of(run(engine, settings, steps=4, seed=4, refiner=RefinerSpec(name="demo-refiner", switch_at=0.5)))
    assert not np.array_equal(refined, plain)
    assert np.array_equal(refined, again)
    assert not np.array_equal(refined, other_seed)


def test_refiner_progress_counts_both_stages(engine, settings):
    seen = []
    request = prepare_request(GenerationRequest(prompt="a cat", width=64, height=64, steps=4, seed=1,
                                                refiner=RefinerSpec(name="demo-refiner", switch_at=0.5)), settings)
    engine.generate(request, on_progress=lambda step, total: seen.append((step, total)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_server_default_refiner_applies_to_txt2img(settings):
    configured = settings.model_copy(update={"refiner": "demo-refiner"})
    request = prepare_request(GenerationRequest(prompt="a cat"), configured)
    assert request.refiner == RefinerSpec(name="demo-refiner", switch_at=configured.refiner_switch_at)


def test_refiner_after_a_too_weak_img2img_is_refused(settings):
    request = GenerationRequest(prompt="x", mode=Mode.img2img, init_image=png_bytes(gradient(64, 64)), strength=0.1,
                                refiner=RefinerSpec(name="demo-refiner", switch_at=0.8))
    with pytest.raises(InvalidRequest) as caught:
        prepare_request(request, settings)
    assert caught.value.param == "refiner.switch_at"

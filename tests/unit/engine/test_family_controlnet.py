"""FLUX.1 and SD3.5 ControlNets through the real engine on the demo models.

``pixelmill demo-model`` writes a random-weight ``FluxControlNetModel`` and ``SD3ControlNetModel``
(their zero-initialised parts made random, so a control image has a visible effect). Per family:
a control image changes the output, another control image changes it again, the same seed
repeats, and a ControlNet of another family is refused naming it.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pixelmill.core.errors import InvalidRequest
from pixelmill.core.types import ControlSpec, Mode
from pixelmill.images.codecs import reencode_png
from tests.support.family_demo import family_engine, family_models, family_request  # noqa: F401
from tests.support.images import decode, gradient, pixels

CONTROLNETS = {"demo-flux-schnell": "demo-flux-controlnet", "demo-flux": "demo-flux-controlnet",
               "demo-sd3": "demo-sd3-controlnet"}


def image(engine, model, **fields) -> np.ndarray:
    return pixels(decode(engine.generate(family_request(model, **fields)).images[0].data))


def control(name: str, picture: Image.Image, scale: float = 1.0) -> tuple[ControlSpec, ...]:
    return (ControlSpec(name=name, image=reencode_png(picture), scale=scale),)


@pytest.mark.parametrize("model", list(CONTROLNETS))
def test_a_control_image_steers_the_image_and_the_same_seed_repeats(family_engine, model):
    name = CONTROLNETS[model]
    light, dark = gradient(64, 64), gradient(64, 64).point(lambda v: 255 - v)
    plain = image(family_engine, model)
    first = image(family_engine, model, controlnets=control(name, light))
    assert np.abs(first.astype(int) - plain.astype(int)).mean() > 1  # the ControlNet does something
    assert np.array_equal(first, image(family_engine, model, controlnets=control(name, light)))  # same seed
    assert not np.array_equal(first, image(family_engine, model, controlnets=control(name, dark)))
    # The scale is applied (scale 0 is not "no ControlNet" here: diffusers' FLUX pipeline
    # samples the control image's VAE latents from the request's generator).
    assert not np.array_equal(first, image(family_engine, model, controlnets=control(name, light, scale=0.5)))
    assert np.array_equal(plain, image(family_engine, model))  # the plain pipeline is unchanged afterwards


@pytest.mark.parametrize("mode", [Mode.img2img, Mode.inpaint])
def test_flux_controlnet_with_img2img_and_inpaint(family_engine, mode):
    init = reencode_png(gradient(64, 64))
    fields = {"mode": mode, "init_image": init, "strength": 0.6, "steps": 3}
    if mode is Mode.inpaint:
        mask = np.zeros((64, 64), dtype=np.uint8)
        mask[:, :32] = 255
        fields |= {"mask_image": reencode_png(Image.fromarray(mask, "L")), "mask_blur": 0}
    without = image(family_engine, "demo-flux", **fields)
    with_control = image(family_engine, "demo-flux", controlnets=control("demo-flux-controlnet", gradient(64, 64)),
                         **fields)
    assert not np.array_equal(without, with_control)
    if mode is Mode.inpaint:  # the unmasked half is kept either way
        assert np.array_equal(with_control[:, 32:], pixels(decode(init))[:, 32:])


@pytest.mark.parametrize(("model", "name"), [("demo-flux", "demo-sd3-controlnet"), ("demo-sd3", "demo-canny"),
                                             ("demo", "demo-flux-controlnet")])
def test_a_controlnet_of_another_family_is_refused_naming_it(family_engine, model, name):
    with pytest.raises(InvalidRequest) as caught:
        image(family_engine, model, controlnets=control(name, gradient(64, 64)))
    assert caught.value.param == "controlnets[0].name"
    assert "ControlNet" in caught.value.message

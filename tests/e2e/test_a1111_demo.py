"""``webuiapi`` against a real ``pixelmill serve`` with the tiny demo engine (64 px, 2 steps).

The one A1111 module on a real engine: what a fake backend cannot show — the infotext in
``info`` is the very text in each PNG, the same seed makes the same pixels, a whole-picture
inpaint keeps every pixel outside the mask, and a ControlNet unit and a LoRA tag run.
"""

from __future__ import annotations

import numpy as np
import pytest
import webuiapi
from PIL import Image

from tests.support.images import gradient

SIZE = {"width": 64, "height": 64, "steps": 2}


@pytest.fixture(scope="module")
def api(server) -> webuiapi.WebUIApi:
    return webuiapi.WebUIApi(baseurl=f"{server.url}/sdapi/v1")


def test_infotexts_are_the_png_parameters_and_seeds_repeat(api):
    result = api.txt2img(prompt="a red fox <lora:demo-style:0.5>", seed=11, batch_size=2,
                         sampler_name="Euler a", **SIZE)
    assert result.info["all_seeds"] == [11, 12]
    for image, text in zip(result.images, result.info["infotexts"]):
        assert image.info["parameters"] == text
    first = result.info["infotexts"][0]
    assert "<lora:demo-style:0.5>" in first and "Sampler: Euler a, Schedule type: Automatic," in first
    again = api.txt2img(prompt="a red fox <lora:demo-style:0.5>", seed=11, batch_size=2,
                        sampler_name="Euler a", **SIZE)
    assert np.array_equal(np.asarray(result.images[1]), np.asarray(again.images[1]))


def test_whole_picture_inpaint_keeps_unmasked_pixels(api):
    picture = gradient(64, 64)
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    result = api.img2img(images=[picture], mask_image=mask, prompt="a window", inpaint_full_res=False,
                         inpainting_fill=1, mask_blur=0, denoising_strength=1.0, seed=5, **SIZE)
    out, keep = np.asarray(result.image.convert("RGB")), np.asarray(mask) == 0
    assert (out[keep] == np.asarray(picture)[keep]).all()
    assert result.info["infotexts"][0] == result.image.info["parameters"]


def test_controlnet_unit_runs(api):
    unit = webuiapi.ControlNetUnit(image=gradient(64, 64), module="canny", model="demo-canny", weight=0.8)
    # A fresh alwayson_scripts: webuiapi's default dict is shared and would keep the unit.
    result = api.txt2img(prompt="a house", controlnet_units=[unit], alwayson_scripts={}, seed=3, **SIZE)
    assert result.image.size == (64, 64)
    assert 'ControlNet 0: "Module: canny, Model: demo-canny, Weight: 0.8' in result.info["infotexts"][0]

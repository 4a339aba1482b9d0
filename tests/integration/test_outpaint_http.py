"""Outpainting over HTTP as the README documents it: an image smaller than ``size``, centred,
with the new border generated, with or without a mask over the original."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from PIL import Image

from pixelmill.images.masks import outpaint_canvas
from tests.support.images import decode, gradient, pixels, png_bytes

SOURCE = gradient(64, 64)
OPAQUE_MASK = Image.new("RGBA", (64, 64), (0, 0, 0, 255))


def edit(server, mask: Image.Image | None, size: str = "128x128") -> httpx.Response:
    files = {"image": ("x.png", png_bytes(SOURCE), "image/png")}
    if mask is not None:
        files["mask"] = ("m.png", png_bytes(mask), "image/png")
    data = {"prompt": "more landscape", "size": size, "steps": "2", "seed": "4"}
    return httpx.post(f"{server.url}/v1/images/edits", files=files, data=data, timeout=120)


@pytest.mark.parametrize("mask", [None, OPAQUE_MASK], ids=["no-mask", "all-opaque-mask"])
def test_outpaint_of_an_opaque_image_keeps_it_and_generates_the_border(server, mask):
    response = edit(server, mask)
    assert response.status_code == 200, response.text
    out = decode(response.json()["data"][0]["b64_json"]).convert("RGB")
    assert out.size == (128, 128)
    assert out.crop((32, 32, 96, 96)).tobytes() == SOURCE.tobytes()  # the whole original, exactly
    fill, _ = outpaint_canvas(SOURCE, (128, 128))  # what the border starts from: the edges extended
    border = np.ones((128, 128), dtype=bool)
    border[32:96, 32:96] = False
    difference = np.abs(pixels(out) - pixels(fill))[border]
    assert difference.mean() > 10, "the border was not generated"


def test_a_size_larger_one_way_and_smaller_the_other_names_size(server):
    response = edit(server, None, size="128x32")
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "size"


def test_same_size_without_anything_to_edit_is_still_a_400_naming_image(server):
    response = edit(server, None, size="64x64")
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "image"

"""The one request policy over real HTTP: ``steps: 0`` refused by both dialects, and an
oversized upload without a size generated at the largest allowed size."""

from __future__ import annotations

import base64

import httpx
import pytest
from PIL import Image

from tests.support.images import decode, png_bytes


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/generate", {"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 0}),
        ("/v1/images/generations", {"model": "demo", "prompt": "a lighthouse", "size": "64x64", "steps": 0}),
    ],
)
def test_steps_zero_is_a_400_naming_steps(server, path, body):
    response = httpx.post(f"{server.url}{path}", json=body, timeout=60)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "steps"


def test_native_img2img_of_a_large_upload_without_size_runs_within_the_limits(server):
    """3000×3000 in, no width/height: generated at 2048×2048 (the limits: 2048 a side, 4.2 MP)."""
    upload = png_bytes(Image.new("RGB", (3000, 3000), (30, 90, 160)))  # one colour: a few kB
    body = {"mode": "img2img", "prompt": "a boat", "image": base64.b64encode(upload).decode()}
    response = httpx.post(f"{server.url}/v1/generate", json=body, timeout=600)
    assert response.status_code == 200, response.text
    result = response.json()
    assert (result["width"], result["height"]) == (2048, 2048)
    assert decode(result["images"][0]["b64_json"]).size == (2048, 2048)

"""The official ``openai`` package against a real pixelmill server, as a user would use it."""

from __future__ import annotations

import io

import httpx
import numpy as np
import openai
import pytest

from tests.support.infotext import parse_a1111_parameters, read_parameters
from tests.support.images import alpha_mask, decode, gradient, pixels, png_bytes

PROMPT = "a red fox in snow"


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)


def _generate(client: openai.OpenAI, **kwargs):
    args = {"model": "demo", "prompt": PROMPT, "size": "128x128", "response_format": "b64_json"} | kwargs
    return client.images.generate(**args)


def test_generate_two_pngs(client):
    result = _generate(client, n=2)
    assert len(result.data) == 2
    for item in result.data:
        image = decode(item.b64_json)
        assert image.format == "PNG"
        assert image.size == (128, 128)


def test_same_seed_same_pixels_other_seed_differs(client):
    first = decode(_generate(client, extra_body={"seed": 42}).data[0].b64_json)
    again = decode(_generate(client, extra_body={"seed": 42}).data[0].b64_json)
    other = decode(_generate(client, extra_body={"seed": 43}).data[0].b64_json)
    assert np.array_equal(pixels(first), pixels(again))
    assert not np.array_equal(pixels(first), pixels(other))


def test_png_carries_a1111_parameters(client):
    item = _generate(client, extra_body={"seed": 42, "negative_prompt": "blurry"}).data[0]
    text = read_parameters(decode_bytes(item.b64_json))
    assert text.splitlines()[0] == PROMPT
    assert "Negative prompt: blurry" in text
    assert "Seed: 42" in text
    fields = parse_a1111_parameters(text)
    assert fields["Seed"] == "42" and fields["Size"] == "128x128" and fields["Model"] == "demo"


def decode_bytes(b64: str) -> bytes:
    import base64

    return base64.b64decode(b64)


def test_url_response_downloads_png(client):
    result = _generate(client, response_format="url")
    response = httpx.get(result.data[0].url)
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert decode(response.content).size == (128, 128)


def test_edit_keeps_unmasked_pixels(client):
    source = gradient(128, 128)
    box = (32, 32, 96, 96)
    result = client.images.edit(
        model="demo", image=("in.png", png_bytes(source), "image/png"),
        mask=("mask.png", png_bytes(alpha_mask(128, 128, box)), "image/png"),
        prompt="a hat", size="128x128", response_format="b64_json",
        extra_body={"seed": 1},
    )
    out = pixels(decode(result.data[0].b64_json))
    assert out.shape == (128, 128, 3)
    keep = np.ones((128, 128), dtype=bool)
    margin = 12  # stay away from the mask edge, where the feathering may reach
    keep[box[1] - margin : box[3] + margin, box[0] - margin : box[2] + margin] = False
    assert np.array_equal(out[keep], pixels(source)[keep])
    inside = out[box[1] + 8 : box[3] - 8, box[0] + 8 : box[2] - 8]
    assert not np.array_equal(inside, pixels(source)[box[1] + 8 : box[3] - 8, box[0] + 8 : box[2] - 8])


def test_variation_returns_an_image(client):
    buffer = io.BytesIO(png_bytes(gradient(96, 64)))
    buffer.name = "in.png"
    result = client.images.create_variation(image=buffer, n=1, size="128x128", response_format="b64_json")
    assert decode(result.data[0].b64_json).size == (128, 128)


def test_bad_size_is_bad_request_naming_size(client):
    with pytest.raises(openai.BadRequestError) as info:
        _generate(client, size="100x100")
    assert info.value.body["param"] == "size"
    assert "multiple of 8" in info.value.body["message"]


def test_unknown_model_is_not_found(client):
    with pytest.raises(openai.NotFoundError) as info:
        _generate(client, model="no-such-model")
    assert info.value.body["param"] == "model"


def test_models_list_contains_demo(client):
    assert "demo" in [model.id for model in client.models.list().data]

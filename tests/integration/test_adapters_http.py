"""LoRAs, ControlNets, the refiner and prompt syntax over real HTTP (native and OpenAI SDK)."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from tests.support.images import decode, pixels, png_bytes

BODY = {"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 2, "seed": 21}


def _shape_b64() -> str:
    image = Image.new("RGB", (64, 64), "black")
    image.paste((255, 255, 255), (16, 16, 48, 48))
    return base64.b64encode(png_bytes(image)).decode()


def generate(server, **fields) -> dict:
    response = httpx.post(f"{server.url}/v1/generate", json=BODY | fields, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def first(body: dict) -> np.ndarray:
    return pixels(decode(body["images"][0]["b64_json"]))


def test_native_lora_field_and_prompt_tag_agree(server):
    plain = first(generate(server))
    field = first(generate(server, loras=[{"name": "demo-style", "weight": 0.9}]))
    tagged = first(generate(server, prompt="a lighthouse <lora:demo-style:0.9>"))
    assert not np.array_equal(field, plain)
    assert np.array_equal(field, tagged)
    assert np.array_equal(first(generate(server)), plain)  # nothing leaks into the next job


def test_native_controlnet_returns_its_control_image(server):
    control = {"name": "demo-canny", "image": _shape_b64(), "preprocess": "canny"}
    body = generate(server, controlnets=[control], return_control_images=True)
    assert len(body["control_images"]) == 1
    edges = pixels(decode(body["control_images"][0]["b64_json"]))
    assert edges[32, 32].tolist() == [0, 0, 0] and edges.max() == 255
    assert np.array_equal(first(generate(server, controlnets=[control | {"scale": 0}])), first(generate(server)))


def test_native_refiner_changes_the_image(server):
    refined = generate(server, steps=4, refiner={"name": "demo-refiner", "switch_at": 0.5})
    assert not np.array_equal(first(refined), first(generate(server, steps=4)))


@pytest.mark.parametrize(("fields", "param", "status"), [
    ({"loras": [{"name": "nope"}]}, "loras[0].name", 404),
    ({"loras": [{"name": "../demo-style"}]}, "loras[0].name", 400),
    ({"loras": [{"name": "demo-style", "weight": 3}]}, "loras[0].weight", 400),
    ({"loras": [{"name": f"l{i}"} for i in range(6)]}, "loras", 400),
    ({"prompt": "x <lora:demo-style:abc>"}, "prompt", 400),
    ({"controlnets": [{"name": "demo-canny", "image": "not base64!"}]}, "controlnets[0].image", 400),
    ({"controlnets": [{"name": "nope", "image": _shape_b64()}]}, "controlnets[0].name", 404),
    ({"refiner": {"name": "demo-refiner", "switch_at": 1.5}}, "refiner.switch_at", 400),
    ({"refiner": {"name": "missing"}}, "refiner.name", 404),
])
def test_bad_adapter_fields_name_their_parameter(server, fields, param, status):
    response = httpx.post(f"{server.url}/v1/generate", json=BODY | fields, timeout=60)
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == param


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)


def test_openai_sdk_sends_adapters_in_extra_body(client, server):
    def image(**extra) -> np.ndarray:
        result = client.images.generate(model="demo", prompt="a lighthouse", size="64x64",
                                        extra_body={"seed": 21, "steps": 2} | extra)
        return pixels(decode(result.data[0].b64_json))

    plain = image()
    assert not np.array_equal(image(loras=[{"name": "demo-style", "weight": 0.9}]), plain)
    result = client.images.generate(
        model="demo", prompt="a lighthouse", size="64x64", response_format="url",
        extra_body={"seed": 21, "steps": 2, "return_control_images": True,
                    "controlnets": [{"name": "demo-canny", "image": _shape_b64(), "preprocess": "invert"}]})
    control_url = result.model_extra["control_images"][0]["url"]
    inverted = pixels(decode(httpx.get(control_url, timeout=30).content))
    assert inverted[32, 32].tolist() == [0, 0, 0]


def test_openai_edit_form_takes_loras_as_json(client):
    image = png_bytes(Image.new("RGB", (64, 64), (90, 120, 200)))
    mask = png_bytes(Image.new("RGBA", (64, 64), (0, 0, 0, 0)))
    results = [
        client.images.edit(image=("i.png", image, "image/png"), mask=("m.png", mask, "image/png"), prompt="sea",
                           extra_body={"seed": 4, "steps": 2, **extra})
        for extra in ({}, {"loras": '[{"name": "demo-style", "weight": 1.0}]'})
    ]
    plain, styled = (pixels(decode(r.data[0].b64_json)) for r in results)
    assert not np.array_equal(plain, styled)

"""What made an image travels with it over HTTP: PNG infotext (A1111) and the batch manifest."""

from __future__ import annotations

import base64
import io
import json
import time
import zipfile

import httpx
from PIL import Image

from tests.support.images import png_bytes
from tests.support.infotext import parse_a1111_parameters, read_parameters

BODY = {"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 2, "seed": 21}


def _control_b64() -> str:
    image = Image.new("RGB", (64, 64), "black")
    image.paste((255, 255, 255), (16, 16, 48, 48))
    return base64.b64encode(png_bytes(image)).decode()


def test_png_info_names_loras_controlnet_refiner_and_clip_skip(server):
    body = BODY | {
        "prompt": "a lighthouse <lora:demo-style:0.7>", "clip_skip": 1,
        "controlnets": [{"name": "demo-canny", "image": _control_b64(), "scale": 0.5, "end": 0.75,
                         "preprocess": "canny"}],
        "refiner": {"name": "demo-refiner", "switch_at": 0.5}, "steps": 4,
    }
    response = httpx.post(f"{server.url}/v1/generate", json=body, timeout=120)
    assert response.status_code == 200, response.text
    fields = parse_a1111_parameters(read_parameters(base64.b64decode(response.json()["images"][0]["b64_json"])))
    assert fields["prompt"] == "a lighthouse <lora:demo-style:0.7>"
    assert fields["Clip skip"] == "2"  # diffusers' clip_skip 1 is A1111's "Clip skip: 2"
    assert fields["ControlNet 0"] == (
        "Module: canny, Model: demo-canny, Weight: 0.5, Guidance Start: 0, Guidance End: 0.75")
    assert (fields["Refiner"], fields["Refiner switch at"]) == ("demo-refiner", "0.5")
    assert (fields["Model"], fields["Seed"], fields["Steps"]) == ("demo", "21", "4")


def test_batch_manifest_names_the_model_and_sampler_that_ran(server):
    body = {"request": BODY | {"loras": [{"name": "demo-style", "weight": 0.5}]}, "prompts": ["a red cube"]}
    batch = httpx.post(f"{server.url}/v1/batches", json=body, timeout=30).json()
    deadline = time.monotonic() + 120
    while httpx.get(f"{server.url}/v1/batches/{batch['id']}").json()["counts"]["succeeded"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    archive = httpx.get(f"{server.url}/v1/batches/{batch['id']}/archive", timeout=60)
    with zipfile.ZipFile(io.BytesIO(archive.content)) as zf:
        (item,) = json.loads(zf.read("manifest.json"))["files"]
        image = zf.read(item["file"])
    fields = parse_a1111_parameters(read_parameters(image))
    params = item["parameters"]
    assert params["model"] == "demo" and params["sampler"] == fields["Sampler"]
    assert params["scheduler"] is not None
    assert params["loras"] == [{"name": "demo-style", "weight": 0.5}]
    assert fields["prompt"] == "a red cube <lora:demo-style:0.5>"

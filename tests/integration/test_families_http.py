"""FLUX.1 and SD3.5 behind the same APIs: a model name is all a client changes.

A real ``pixelmill serve`` on loopback whose default model is the FLUX.1-schnell demo; the
native and OpenAI dialects (and A1111's, through the same policy) generate with FLUX and
SD3.5 by name, get the few-step profile's defaults, and get a 400 naming the parameter a
family cannot honour.
"""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from tests.support.family_demo import family_models  # noqa: F401
from tests.support.images import decode, pixels
from tests.support.server import ServerProcess


@pytest.fixture(scope="module")
def flux_server(family_models, tmp_path_factory):  # noqa: F811
    proc = ServerProcess(tmp_path_factory.mktemp("flux-server"), "--models-dir", str(family_models),
                         "--model", "demo-flux-schnell")
    proc.start()
    yield proc
    proc.stop()


def native(server, **body) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/generate", json={"prompt": "a red cat", "width": 64, "height": 64, "seed": 4}
                      | body, timeout=180)


def openai(server, **body) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/images/generations",
                      json={"prompt": "a red cat", "size": "64x64", "seed": 4} | body, timeout=180)


def test_native_default_flux_schnell_gets_its_few_step_profile(flux_server):
    response = native(flux_server)
    assert response.status_code == 200, response.text
    assert response.json()["steps"] == 4 and response.json()["model"] == "demo-flux-schnell"
    assert pixels(decode(response.json()["images"][0]["b64_json"])).shape == (64, 64, 3)


@pytest.mark.parametrize("model", ["demo-flux-schnell", "demo-flux", "demo-sd3"])
def test_openai_and_native_serve_every_family_by_name(flux_server, model):
    by_native = native(flux_server, model=model, steps=2)
    by_openai = openai(flux_server, model=model, steps=2)
    assert by_native.status_code == 200, by_native.text
    assert by_openai.status_code == 200, by_openai.text
    same = [pixels(decode(by_native.json()["images"][0]["b64_json"])),
            pixels(decode(by_openai.json()["data"][0]["b64_json"]))]
    assert np.array_equal(*same)  # same model, prompt, seed and steps: the dialect changes nothing


@pytest.mark.parametrize(("model", "body", "param"), [
    ("demo-flux-schnell", {"negative_prompt": "blurry"}, "negative_prompt"),
    ("demo-flux-schnell", {"guidance": 3.5}, "guidance"),
    ("demo-flux", {"refiner": {"name": "demo-refiner"}}, "refiner"),
    ("demo-sd3", {"refiner": {"name": "demo-refiner"}}, "refiner"),
    ("demo-sd3", {"scheduler": "DPM++ 2M Karras"}, "scheduler"),
])
def test_what_a_family_cannot_do_is_a_400_naming_the_parameter(flux_server, model, body, param):
    for response in (native(flux_server, model=model, **body), openai(flux_server, model=model, **body)):
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["param"] == param and "do not support" in error["message"]


def test_a1111_txt2img_runs_flux_through_the_same_policy(flux_server):
    body = {"prompt": "a fox", "width": 64, "height": 64, "seed": 9, "sampler_name": "Euler",
            "override_settings": {"sd_model_checkpoint": "demo-flux-schnell"}}
    response = httpx.post(f"{flux_server.url}/sdapi/v1/txt2img", json=body, timeout=180)
    assert response.status_code == 200, response.text
    assert json.loads(response.json()["info"])["steps"] == 4  # the schnell profile, not the server's 30
    refused = httpx.post(f"{flux_server.url}/sdapi/v1/txt2img", json=body | {"negative_prompt": "x"}, timeout=60)
    assert refused.status_code >= 400 and "negative_prompt" in refused.text

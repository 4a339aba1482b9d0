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


def test_a_kohya_flux_lora_is_uploaded_checked_listed_and_used(flux_server, family_models, tmp_path):  # noqa: F811
    """What a team leaving a hosted provider brings: a kohya FLUX.1 LoRA (BFL's fused names)."""
    from tests.support.flux_lora import fused_shapes, write_flux_lora

    transformer = family_models / "checkpoints/demo-flux-schnell/transformer/diffusion_pytorch_model.safetensors"
    data = write_flux_lora(tmp_path / "brand.safetensors", fused_shapes(transformer), seed=5).read_bytes()

    def upload(name: str, base: str) -> httpx.Response:
        return httpx.post(f"{flux_server.url}/v1/loras", data={"name": name, "base": base},
                          files={"file": ("brand.safetensors", data, "application/octet-stream")}, timeout=60)

    refused = upload("brand-on-sd3", "demo-sd3")
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "file", refused.text
    assert "lora_unet_double_blocks_0_" in refused.json()["error"]["message"]
    try:
        stored = upload("brand-kohya", "demo-flux-schnell")
        assert stored.status_code == 201, stored.text
        body = stored.json()
        assert (body["format"], body["family"], body["components"]) == ("kohya", "flux", ["transformer"])
        assert body["compatible_with"] == ["demo-flux", "demo-flux-schnell"]
        listed = {e["name"]: e for e in httpx.get(f"{flux_server.url}/v1/loras", timeout=30).json()["data"]}
        assert listed["brand-kohya"]["family"] == "flux" and listed["demo-flux-style"]["family"] == "flux"

        def run(**body) -> np.ndarray:
            response = native(flux_server, model="demo-flux-schnell", steps=2, **body)
            assert response.status_code == 200, response.text
            return pixels(decode(response.json()["images"][0]["b64_json"]))

        plain = run()
        assert np.array_equal(plain, run(loras=[{"name": "brand-kohya", "weight": 0.0}]))
        assert not np.array_equal(plain, run(loras=[{"name": "brand-kohya", "weight": 1.0}]))
    finally:
        (family_models / "loras" / "brand-kohya.safetensors").unlink(missing_ok=True)

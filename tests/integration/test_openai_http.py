"""The OpenAI dialect over real HTTP: formats, limits and error bodies."""

from __future__ import annotations

import base64
import io
import json

import httpx
import pytest
from PIL import Image

from tests.support.images import assert_same_image, decode, gradient, png_bytes


def post_generation(server, **body) -> httpx.Response:
    payload = {"model": "demo", "prompt": "a lighthouse", "size": "64x64"} | body
    return httpx.post(f"{server.url}/v1/images/generations", json=payload, timeout=120)


def error_of(response: httpx.Response) -> dict:
    return response.json()["error"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"size": "100x100"}, "size"),
        ({"size": "64x4096"}, "size"),
        ({"size": "huge"}, "size"),
        ({"n": 11}, "n"),
        ({"n": 0}, "n"),
        ({"steps": 151}, "steps"),
        ({"guidance": 31}, "guidance"),
        ({"prompt": "x" * 4001}, "prompt"),
        ({"negative_prompt": "x" * 4001}, "negative_prompt"),
        ({"scheduler": "no-such-sampler"}, "scheduler"),
        ({"output_format": "gif"}, "output_format"),
        ({"output_compression": 101}, "output_compression"),
        ({"response_format": "file"}, "response_format"),
        ({"seed": 2**40}, "seed"),
    ],
)
def test_invalid_parameters_are_400_naming_the_parameter(server, body, param):
    response = post_generation(server, **body)
    assert response.status_code == 400, response.text
    error = error_of(response)
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert error["message"]


def test_missing_prompt_names_prompt(server):
    response = httpx.post(f"{server.url}/v1/images/generations", json={"size": "64x64"})
    assert response.status_code == 400
    assert error_of(response)["param"] == "prompt"


def test_unknown_model_is_404(server):
    response = post_generation(server, model="../etc/passwd")
    assert response.status_code in (400, 404)
    assert error_of(response)["param"] == "model"
    response = post_generation(server, model="missing")
    assert response.status_code == 404


def test_openai_model_names_mean_the_default_model(server):
    response = post_generation(server, model="dall-e-3", steps=1)
    assert response.status_code == 200, response.text


def test_json_body_over_one_mib_is_413(server):
    response = httpx.post(
        f"{server.url}/v1/images/generations",
        content=json.dumps({"prompt": "x" * (1 << 20)}), headers={"content-type": "application/json"},
    )
    assert response.status_code == 413
    assert error_of(response)["code"] == "payload_too_large"


def test_multipart_body_over_20_mib_is_413(server):
    files = {"image": ("big.png", b"\0" * (21 << 20), "image/png")}
    response = httpx.post(f"{server.url}/v1/images/variations", files=files, timeout=60)
    assert response.status_code == 413


@pytest.mark.parametrize("fmt", ["GIF", "BMP"])
def test_upload_formats_other_than_png_jpeg_webp_are_refused(server, fmt):
    buffer = io.BytesIO()
    gradient(64, 64).save(buffer, format=fmt)
    files = {"image": (f"x.{fmt.lower()}", buffer.getvalue(), "image/png")}
    response = httpx.post(f"{server.url}/v1/images/variations", files=files, timeout=60)
    assert response.status_code == 400
    assert error_of(response)["param"] == "image"


def test_edit_without_mask_or_transparency_names_image(server):
    files = {"image": ("x.png", png_bytes(gradient(64, 64)), "image/png")}
    response = httpx.post(f"{server.url}/v1/images/edits", files=files, data={"prompt": "x"}, timeout=60)
    assert response.status_code == 400
    assert error_of(response)["param"] == "image"


@pytest.mark.parametrize(("fmt", "media"), [("jpeg", "image/jpeg"), ("webp", "image/webp")])
def test_jpeg_and_webp_output(server, fmt, media):
    small = post_generation(server, output_format=fmt, output_compression=20, seed=5, steps=1).json()
    large = post_generation(server, output_format=fmt, output_compression=95, seed=5, steps=1).json()
    image = decode(small["data"][0]["b64_json"])
    assert Image.MIME[image.format] == media
    assert len(base64.b64decode(small["data"][0]["b64_json"])) < len(base64.b64decode(large["data"][0]["b64_json"]))


def test_response_reports_seed_and_size(server):
    body = post_generation(server, n=2, seed=100, steps=1).json()
    assert [item["seed"] for item in body["data"]] == [100, 101]
    assert body["size"] == "64x64"


def test_random_seed_is_returned_and_reproduces(server):
    first = post_generation(server, steps=1).json()["data"][0]
    again = post_generation(server, steps=1, seed=first["seed"]).json()["data"][0]
    assert decode(first["b64_json"]).tobytes() == decode(again["b64_json"]).tobytes()


def test_image_i_equals_single_image_with_seed_plus_i(server):
    both = post_generation(server, n=2, seed=7, steps=2).json()["data"]
    second = post_generation(server, n=1, seed=8, steps=2).json()["data"][0]
    assert_same_image(decode(both[1]["b64_json"]), decode(second["b64_json"]))


def test_outpaint_with_an_image_smaller_than_size(server):
    source = gradient(64, 64)
    transparent = Image.new("RGBA", (64, 64), (0, 0, 0, 255))
    transparent.putpixel((0, 0), (0, 0, 0, 0))  # one editable pixel: the rest is kept
    files = {
        "image": ("x.png", png_bytes(source), "image/png"),
        "mask": ("m.png", png_bytes(transparent), "image/png"),
    }
    data = {"prompt": "more landscape", "size": "128x128", "steps": "2"}
    response = httpx.post(f"{server.url}/v1/images/edits", files=files, data=data, timeout=120)
    assert response.status_code == 200, response.text
    out = decode(response.json()["data"][0]["b64_json"]).convert("RGB")
    assert out.size == (128, 128)
    # the original sits in the centre, untouched away from its (masked) border
    assert out.crop((48, 48, 80, 80)).tobytes() == source.crop((16, 16, 48, 48)).tobytes()


def test_files_unknown_id_is_404(server):
    response = httpx.get(f"{server.url}/v1/files/{'A' * 32}")
    assert response.status_code == 404
    assert httpx.get(f"{server.url}/v1/files/..%2F..%2Fetc%2Fpasswd").status_code == 404


def test_every_response_has_a_request_id(server):
    response = post_generation(server, size="1x1")
    assert len(response.headers["x-request-id"]) == 16
    assert error_of(response)["request_id"] == response.headers["x-request-id"]


def test_unknown_fields_are_ignored_and_named_in_a_header(server):
    """OpenAI's SDK adds parameters often; a newer client keeps working, and a typo is visible."""
    response = post_generation(server, prompt="x", size="64x64", steps=1, respons_format="url", svg=True)
    assert response.status_code == 200, response.text
    assert response.headers["X-Pixelmill-Ignored-Fields"] == "respons_format, svg"
    assert "b64_json" in response.json()["data"][0]  # the misspelt response_format had no effect
    known = post_generation(server, prompt="x", size="64x64", steps=1)
    assert "X-Pixelmill-Ignored-Fields" not in known.headers


def test_ignored_field_names_are_escaped_in_the_header(server):
    """Names are the client's text: non-ASCII and CR/LF are escaped, never a 500 or a split header."""
    response = post_generation(server, prompt="x", size="64x64", steps=1, **{"é\r\nX-Evil: 1": 1})
    assert response.status_code == 200, response.text
    assert response.headers["X-Pixelmill-Ignored-Fields"] == "\\u00e9\\r\\nX-Evil: 1"
    assert "X-Evil" not in response.headers

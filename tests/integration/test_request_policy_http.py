"""The one request policy over real HTTP: ``steps: 0`` refused by both dialects, and an
oversized upload without a size generated at the largest allowed size."""

from __future__ import annotations

import base64

import httpx
import pytest
from PIL import Image

from pixelmill.core.types import GenerationRequest
from pixelmill.server import build_app
from pixelmill.settings import Settings
from tests.support.backends.base import FakeBackend
from tests.support.images import decode, png_bytes
from tests.support.live import LiveServer


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


class RecordingBackend(FakeBackend):
    """The fake backend, keeping every request it was asked to run."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[GenerationRequest] = []

    async def generate_batch(self, requests, **kwargs):
        self.seen.extend(requests)
        return await super().generate_batch(requests, **kwargs)


def test_native_img2img_of_a_large_upload_without_size_runs_within_the_limits(tmp_path):
    """3000×3000 in, no width/height: the backend is asked for 2048×2048 (the limits: 2048 a
    side, 4.2 MP) and the answer says so. On a fake backend: what is checked is what the
    policy hands the engine (which runs the resolved size it is given, see the engine tests),
    not 2048² of denoising on the CPU."""
    backend = RecordingBackend()
    app = build_app(Settings(data_dir=tmp_path / "data", models_dir=tmp_path / "models"),
                    backend=lambda _settings, _registry: backend)
    upload = png_bytes(Image.new("RGB", (3000, 3000), (30, 90, 160)))  # one colour: a few kB
    body = {"mode": "img2img", "prompt": "a boat", "image": base64.b64encode(upload).decode()}
    with LiveServer(app) as live:
        response = httpx.post(f"{live.url}/v1/generate", json=body, timeout=120)
    assert response.status_code == 200, response.text
    result = response.json()
    assert (result["width"], result["height"]) == (2048, 2048)
    assert [(request.width, request.height) for request in backend.seen] == [(2048, 2048)]
    assert decode(result["images"][0]["b64_json"]).size == (2048, 2048)

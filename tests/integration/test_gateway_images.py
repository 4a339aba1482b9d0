"""Image inputs upstream: img2img and inpaint to a Replicate-kind upstream (``image`` and
``mask`` as data: URIs, ``prompt_strength``), inpaint to an OpenAI-kind one (``images/edits``
multipart, transparent = edit); what the Images API cannot take, and LoRAs and ControlNets
for any upstream, refused (400 naming the parameter) or kept local. The upstream is another
pixelmill in-thread whose backend keeps the requests it ran: what arrived is checked."""

from __future__ import annotations

import base64
import contextlib
from pathlib import Path

import numpy as np
import pytest

from pixelmill.api.app import create_app
from pixelmill.core.errors import InvalidRequest
from pixelmill.core.types import ControlSpec, GenerationRequest, LoraSpec, Mode
from pixelmill.gateway.config import parse_config
from pixelmill.gateway.dispatch import Dispatcher
from pixelmill.jobs.store import JobStore
from pixelmill.server import build_services
from pixelmill.settings import Settings
from tests.integration.test_gateway_routing import (FAST, UPSTREAM_MODEL, backends_toml, gateway, row, submit,
                                                    wait)
from tests.support.backends.records_requests import RecordsRequests
from tests.support.images import decode, gradient, png_bytes
from tests.support.live import LiveServer


@contextlib.contextmanager
def recording_upstream(tmp: Path):
    """Another pixelmill on loopback whose backend keeps what it was asked (``server.backend``)."""
    settings = Settings(data_dir=tmp / "upstream", model_aliases=[UPSTREAM_MODEL], preview_steps=0, **FAST)
    backend = RecordsRequests()
    server = LiveServer(create_app(settings, build_services(settings, backend=lambda _s, _r: backend)))
    server.backend = backend
    with server:
        yield server


def _data_url(image) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode()


def _mask(width: int, height: int):
    """White (repaint) in the left half, black (keep) elsewhere: the native convention."""
    from PIL import Image

    mask = np.zeros((height, width), dtype=np.uint8)
    mask[:, : width // 2] = 255
    return Image.fromarray(mask, "L")


def _binary(png: bytes) -> np.ndarray:
    return np.asarray(decode(png).convert("L")) >= 128


def _arrived(up) -> GenerationRequest:
    (request,) = up.backend.requests
    up.backend.requests.clear()
    return request


def test_img2img_and_inpaint_to_a_replicate_kind_upstream(tmp_path):
    image = gradient(128, 64)
    with recording_upstream(tmp_path) as up:
        toml = backends_toml(tmp_path, up, kind="replicate")
        with gateway(tmp_path, toml) as gw:
            job = submit(gw.url, "cloud-model", mode="img2img", image=_data_url(image), strength=0.55,
                         width=None, height=None)
            done = wait(gw.url, job["id"])
            assert done["status"] == "succeeded", done
            assert row(gw, job["id"])["route"] == "hosted" and row(gw, job["id"])["upstream_id"]
            sent = _arrived(up)
            assert sent.mode is Mode.img2img and sent.strength == pytest.approx(0.55)
            assert sent.prompt == "a gateway test" and (sent.width, sent.height) == (128, 64)  # the image's
            assert np.array_equal(np.asarray(decode(sent.init_image).convert("RGB")), np.asarray(image))

            job = submit(gw.url, "cloud-model", mode="inpaint", image=_data_url(image),
                         mask=_data_url(_mask(128, 64)), strength=0.9, width=None, height=None)
            assert wait(gw.url, job["id"])["status"] == "succeeded"
            sent = _arrived(up)
            assert sent.mode is Mode.inpaint and sent.strength == pytest.approx(0.9)
            repaint = _binary(sent.mask_image)
            assert repaint[:, :64].all() and not repaint[:, 64:].any()  # white = repaint, both sides


def test_inpaint_to_an_openai_kind_upstream_and_what_it_cannot_take(tmp_path):
    image = gradient(64, 64)
    with recording_upstream(tmp_path) as up:
        toml = backends_toml(tmp_path, up, kind="openai")
        with gateway(tmp_path, toml) as gw:
            job = submit(gw.url, "cloud-model", mode="inpaint", image=_data_url(image),
                         mask=_data_url(_mask(64, 64)), width=None, height=None)
            done = wait(gw.url, job["id"])
            assert done["status"] == "succeeded", done
            sent = _arrived(up)  # images/edits: the RGBA mask's transparent half is the repainted half
            assert sent.mode is Mode.inpaint
            repaint = _binary(sent.mask_image)
            assert repaint[:, :32].all() and not repaint[:, 32:].any()
            assert np.array_equal(np.asarray(decode(sent.init_image).convert("RGB")), np.asarray(image))
            # The Images API has no image-to-image with a strength: refused, naming the image.
            refused = submit(gw.url, "cloud-model", expect=400, mode="img2img", image=_data_url(image),
                             width=None, height=None)
            assert refused["error"]["param"] == "image" and "img2img" in refused["error"]["message"]
            assert "hosted" in refused["error"]["message"]
        assert up.backend.requests == []


CONFIG = """
[[backend]]
name = "hosted"
kind = "{kind}"
url = "https://api.example.com/v1"
models = ["cloud", "mixed", "shadowed"]
price_per_image = 0.01
checked = 2026-11-30

[[route]]
model = "mixed"
policy = "local-then-upstream"
backend = "hosted"
overflow_wait_s = 0

[[route]]
model = "shadowed"
policy = "shadow"
backend = "hosted"
sample = 1
"""


class _Dead:
    """An embedded local worker that is down: local-then-upstream overflows at once."""

    unavailable = "down"


@pytest.mark.parametrize("kind", ["replicate", "openai"])
def test_loras_and_controlnets_never_go_upstream(kind, tmp_path):
    config = parse_config(CONFIG.format(kind=kind), "b.toml", credentials=False)
    dispatcher = Dispatcher(config, JobStore.open(str(tmp_path / "jobs.db")), [_Dead()], silence_s=10)
    lora = dict(loras=(LoraSpec(name="style"),))
    control = dict(controlnets=(ControlSpec(name="canny", image=b"png"),))
    for extra, param in ((lora, "loras[0].name"), (control, "controlnets[0].name")):
        with pytest.raises(InvalidRequest) as refused:
            dispatcher.decide(GenerationRequest(prompt="p", model="cloud", **extra))
        assert refused.value.param == param and "hosted" in str(refused.value)
        # Mixed routes keep them local instead (no overflow, no shadow run).
        assert dispatcher.decide(GenerationRequest(prompt="p", model="mixed", **extra)).route == "local"
        shadow = dispatcher.decide(GenerationRequest(prompt="p", model="shadowed", **extra))
        assert shadow.route == "local" and shadow.shadow_backend is None
    # Plain text-to-image does overflow and shadow: the refusals above are the inputs' doing.
    assert dispatcher.decide(GenerationRequest(prompt="p", model="mixed")).route == "hosted"
    assert dispatcher.decide(GenerationRequest(prompt="p", model="shadowed")).shadow_backend == "hosted"
    img2img = GenerationRequest(prompt="p", model="mixed", mode=Mode.img2img, init_image=b"png")
    assert dispatcher.decide(img2img).route == ("hosted" if kind == "replicate" else "local")

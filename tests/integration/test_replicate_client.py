"""Issue 15: the Replicate dialect with the official ``replicate`` client, unchanged, and the
plain ``requests`` snippet of the issue, against a real loopback server (fake backend).

One app for the module (:class:`LiveServer`, its worker on a fake backend that records the
requests it runs), so what is asserted is the wire behaviour and the translation into the
one internal request, not the pixels.
"""

from __future__ import annotations

import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
import replicate
import requests
from PIL import Image
from replicate.exceptions import ModelError, ReplicateError
from replicate.webhook import InvalidSignatureError

from pixelmill.server import build_app
from pixelmill.settings import Settings
from tests.support.backends.base import FakeBackend
from tests.support.images import decode, gradient, png_bytes
from tests.support.live import LiveServer
from tests.support.receiver import Receiver

HOSTED_VERSION = "39ed52f2a78e934b3ba6e2a89f5b1c712de7dfea535525255b1aa35c5565e08b"
SMALL = {"width": 64, "height": 64, "num_inference_steps": 2}


class RecordingBackend(FakeBackend):
    """The fake backend, remembering every request it ran (newest last)."""

    seen: list = []

    async def generate_batch(self, requests, **kwargs):
        RecordingBackend.seen.extend(requests)
        return await super().generate_batch(requests, **kwargs)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("replicate")
    settings = Settings(
        data_dir=tmp / "data", models_dir=tmp / "models", heartbeat_s=0.1, lease_s=2, progress_interval_s=0.02,
        poll_interval_s=0.05, max_batch_wait_ms=0, webhook_allow_private=True,
        model_aliases=["dall-e-3", "stability-ai/sdxl", "black-forest-labs/flux-schnell",
                       f"{HOSTED_VERSION}=stability-ai/sdxl"],
    )
    app = build_app(settings, backend=lambda s, r: RecordingBackend(step_s=0.01))
    with LiveServer(app) as live:
        yield live


@pytest.fixture(scope="module")
def client(server):
    return replicate.Client(api_token="unused", base_url=f"{server.url}/replicate")


def last_request():
    return RecordingBackend.seen[-1]


def test_the_issue_snippet_with_requests_runs_with_only_the_url_changed(server):
    resp = requests.post(
        f"{server.url}/replicate/v1/predictions",
        headers={"Authorization": "Bearer unused"},
        json={"model": "black-forest-labs/flux-schnell",
              "input": {"prompt": "a product photo of a ceramic mug on linen, soft light",
                        "num_inference_steps": 4, "seed": 0}},
        timeout=120)
    resp.raise_for_status()
    image_url = resp.json()["output"][0]
    assert resp.status_code == 201
    assert resp.headers["Location"] == resp.json()["urls"]["get"]
    assert decode(httpx.get(image_url).content).format == "PNG"
    assert last_request().seed == 0 and last_request().steps == 4


def test_run_returns_the_output_urls(client):
    output = client.run("stability-ai/sdxl", input={"prompt": "a fox", **SMALL, "num_outputs": 2,
                                                    "scheduler": "K_EULER_ANCESTRAL", "guidance_scale": 6.5})
    assert len(output) == 2
    assert decode(httpx.get(output[0]).content).size == (64, 64)
    request = last_request()
    assert (request.n, request.scheduler, request.guidance, request.steps) == (2, "euler_a", 6.5, 2)


def test_run_with_a_version_reads_the_version_and_its_schema(client):
    model = client.models.get("stability-ai/sdxl")
    version = model.latest_version
    assert version.openapi_schema["components"]["schemas"]["Output"]["type"] == "array"
    assert "prompt" in version.openapi_schema["components"]["schemas"]["Input"]["properties"]
    output = client.run(f"stability-ai/sdxl:{version.id}", input={"prompt": "a fox", **SMALL})
    assert len(output) == 1


def test_a_hosted_version_id_runs_when_it_is_an_alias(client):
    output = client.run(f"stability-ai/sdxl:{HOSTED_VERSION}", input={"prompt": "a fox", **SMALL})
    assert len(output) == 1


def test_create_wait_reload_progress_and_metrics(client):
    prediction = client.models.predictions.create(model="stability-ai/sdxl",
                                                  input={"prompt": "a fox", **SMALL, "seed": 7})
    prediction.wait()
    assert prediction.status == "succeeded"
    assert prediction.progress.percentage == 1.0 and prediction.progress.total == 2
    assert "Using seed: 7" in prediction.logs
    assert prediction.metrics["predict_time"] == pytest.approx(0.01)
    prediction.reload()
    assert prediction.output and prediction.completed_at


def test_cancel_a_running_prediction(client, server):
    response = httpx.post(f"{server.url}/replicate/v1/models/stability-ai/sdxl/predictions",
                          headers={"Prefer": "respond-async"},
                          json={"input": {"prompt": "slow", "width": 64, "height": 64, "num_inference_steps": 150}})
    assert response.status_code == 201
    assert response.json()["status"] in ("starting", "processing")
    canceled = client.predictions.cancel(response.json()["id"])
    prediction = client.predictions.get(canceled.id)
    prediction.wait()
    assert prediction.status == "canceled" and prediction.output is None
    again = client.predictions.cancel(prediction.id)  # cancelling twice is no error
    assert again.status == "canceled"


def test_list_pages_through_predictions(client):
    created = client.predictions.create(version="stability-ai/sdxl", input={"prompt": "listed", **SMALL},
                                        wait=True)
    page = client.predictions.list()
    assert created.id in [prediction.id for prediction in page.results]
    assert all(p.status in ("starting", "processing", "succeeded", "failed", "canceled") for p in page)


def test_list_follows_next_pages(client, monkeypatch):
    from pixelmill.api.replicate import router

    monkeypatch.setattr(router, "PAGE_SIZE", 2)
    first = client.predictions.list()
    assert len(first.results) == 2 and first.next
    second = client.predictions.list(first.next)
    assert second.results and not {p.id for p in first} & {p.id for p in second}
    assert second.results[0].created_at <= first.results[-1].created_at


def test_invalid_input_is_a_422_problem_naming_the_field(client):
    with pytest.raises(ReplicateError) as unknown:
        client.run("stability-ai/sdxl", input={"prompt": "a fox", "bogus_field": 1})
    assert unknown.value.status == 422 and "bogus_field" in unknown.value.detail
    assert unknown.value.title == "Input validation failed"
    with pytest.raises(ReplicateError) as too_many:
        client.run("stability-ai/sdxl", input={"prompt": "a fox", **SMALL, "num_outputs": 99})
    assert too_many.value.status == 422 and "num_outputs" in too_many.value.detail
    with pytest.raises(ReplicateError) as scheduler:
        client.run("stability-ai/sdxl", input={"prompt": "a fox", **SMALL, "scheduler": "Nope"})
    assert scheduler.value.status == 422 and "scheduler" in scheduler.value.detail


def test_problem_body_on_the_wire(server):
    response = httpx.post(f"{server.url}/replicate/v1/predictions", json={"version": "x/y", "input": {}})
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert {"type", "title", "status", "detail"} <= body.keys() and body["param"] == "version"
    response = httpx.post(f"{server.url}/replicate/v1/predictions", json={"model": "stability-ai/sdxl",
                                                                        "input": {"prompt": "x", "lora": "missing"}})
    assert response.status_code == 404 and response.json()["param"] == "input.lora"


def test_unknown_model_is_404(client):
    with pytest.raises(ReplicateError) as missing:
        client.models.get("nobody/nothing")
    assert missing.value.status == 404
    with pytest.raises(ReplicateError) as run:
        client.run("nobody/nothing", input={"prompt": "x"})
    assert run.value.status == 404 and "--model-aliases" in run.value.detail


def test_uploaded_file_is_an_img2img_input(client):
    picture = io.BytesIO(png_bytes(gradient(96, 64)))
    picture.name = "photo.png"
    output = client.run("stability-ai/sdxl", input={"prompt": "a fox", "image": picture, "prompt_strength": 0.5,
                                                    "width": 1024, "height": 1024, "num_inference_steps": 2})
    request = last_request()
    assert (request.mode.value, request.width, request.height, request.strength) == ("img2img", 96, 64, 0.5)
    assert decode(httpx.get(output[0]).content).size == (96, 64)


def test_uploaded_file_can_be_read_back(client):
    picture = io.BytesIO(png_bytes(gradient(32, 16)))
    uploaded = client.files.create(picture, metadata={"purpose": "test"})
    assert uploaded.metadata == {"purpose": "test"} and uploaded.content_type == "image/png"
    again = client.files.get(uploaded.id)
    assert (again.size, again.checksums["sha256"]) == (uploaded.size, uploaded.checksums["sha256"])
    assert decode(httpx.get(f"{uploaded.urls['get']}/download").content).size == (32, 16)


def test_http_url_inputs_are_fetched_through_the_guard(client):
    picture = png_bytes(gradient(128, 64))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's naming
            self.send_response(200 if self.path == "/photo.png" else 404)
            self.send_header("Content-Length", str(len(picture)))
            self.end_headers()
            self.wfile.write(picture)

        def log_message(self, *args):
            pass

    images = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=images.serve_forever, args=(0.05,), daemon=True).start()
    url = f"http://127.0.0.1:{images.server_address[1]}"
    try:
        client.run("stability-ai/sdxl", input={"prompt": "x", "image": f"{url}/photo.png", "num_inference_steps": 2})
        assert (last_request().width, last_request().height) == (128, 64)
        with pytest.raises(ReplicateError) as missing:
            client.run("stability-ai/sdxl", input={"prompt": "x", "image": f"{url}/gone.png"})
        assert missing.value.status == 422 and "input.image" in missing.value.detail
    finally:
        images.shutdown()
        images.server_close()


def test_prefer_wait_answers_in_time_and_a_running_prediction_says_starting(client, server):
    began = time.monotonic()
    response = httpx.post(f"{server.url}/replicate/v1/predictions", headers={"Prefer": "wait=1"}, timeout=1.5,
                          json={"version": "stability-ai/sdxl",
                                "input": {"prompt": "slow", "width": 64, "height": 64, "num_inference_steps": 150}})
    assert response.status_code == 201 and time.monotonic() - began < 1.5
    assert response.json()["status"] == "starting"  # what the client's run() takes for "not done yet"
    assert client.predictions.cancel(response.json()["id"]).status in ("processing", "canceled")
    prediction = client.predictions.get(response.json()["id"])
    prediction.wait()
    assert prediction.status == "canceled"


def test_cancel_after_cancels_an_unfinished_prediction(client, server):
    response = httpx.post(f"{server.url}/replicate/v1/predictions",
                          headers={"Prefer": "respond-async", "Cancel-After": "200ms"},
                          json={"version": "stability-ai/sdxl",
                                "input": {"prompt": "slow", "width": 64, "height": 64, "num_inference_steps": 150}})
    prediction = client.predictions.get(response.json()["id"])
    prediction.wait()
    assert prediction.status == "canceled"


def test_data_uri_mask_white_is_repainted(client):
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    image = io.BytesIO(png_bytes(gradient(64, 64)))
    masked = io.BytesIO(png_bytes(mask))
    client.run("stability-ai/sdxl", input={"prompt": "a roof", "image": image, "mask": masked,
                                           "num_inference_steps": 2}, file_encoding_strategy="base64")
    request = last_request()
    assert request.mode.value == "inpaint"
    repainted = decode(request.mask_image).convert("L")
    assert repainted.getpixel((5, 5)) == 255 and repainted.getpixel((60, 5)) == 0


def test_deployments(client):
    deployment = client.deployments.get("stability-ai/sdxl")
    assert deployment.current_release.model == "stability-ai/sdxl"
    prediction = client.deployments.predictions.create("stability-ai/sdxl", input={"prompt": "x", **SMALL})
    prediction.wait()
    assert prediction.status == "succeeded"


def test_webhooks_are_signed_so_the_client_validates_them(client):
    receiver = Receiver()
    try:
        prediction = client.predictions.create(
            version="stability-ai/sdxl", input={"prompt": "hooked", **SMALL}, webhook=f"{receiver.url}/hook",
            webhook_events_filter=["start", "completed"])
        prediction.wait()
        deadline = time.monotonic() + 10
        while len(receiver.requests) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        secret = client.webhooks.default.secret()
        assert secret.key.startswith("whsec_")
        bodies = []
        for delivery in receiver.requests:
            body = delivery["body"].decode()
            client.webhooks.validate(headers=delivery["headers"], body=body, secret=secret, tolerance=300)
            bodies.append(replicate.prediction.Prediction(**json.loads(body)))
        assert len(bodies) == 2 and {b.id for b in bodies} == {prediction.id}
        by_status = {body.status: body for body in bodies}  # deliveries may arrive out of order
        assert by_status.keys() == {"processing", "succeeded"} and by_status["processing"].output is None
        assert by_status["succeeded"].output == prediction.output
        assert all(request["path"] == "/hook" for request in receiver.requests)
        with pytest.raises(InvalidSignatureError):
            client.webhooks.validate(headers=receiver.requests[-1]["headers"],
                                     body=receiver.requests[-1]["body"].decode() + " ", secret=secret)
    finally:
        receiver.close()


def test_a_failed_prediction_raises_model_error(client, monkeypatch):
    async def boom(self, requests, **kwargs):
        from pixelmill.core.errors import GenerationFailed
        raise GenerationFailed("the fake failed on purpose", code="test_failure")

    monkeypatch.setattr(RecordingBackend, "generate_batch", boom)
    with pytest.raises(ModelError) as failed:
        client.run("stability-ai/sdxl", input={"prompt": "x", **SMALL})
    assert failed.value.prediction.status == "failed"
    assert "on purpose" in failed.value.prediction.error

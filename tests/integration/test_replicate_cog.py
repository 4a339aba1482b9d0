"""Issue 15: Cog's local HTTP API under ``/cog``, as code that calls Cog containers sends it,
against a real loopback server (fake backend)."""

from __future__ import annotations

import base64
import json
import time

import httpx
import pytest

from pixelmill.server import build_app
from pixelmill.settings import Settings
from tests.support.backends.base import FakeBackend
from tests.support.images import decode
from tests.support.live import LiveServer
from tests.support.receiver import Receiver

INPUT = {"prompt": "an onion with sunglasses", "width": 64, "height": 64, "num_inference_steps": 2}
SLOW = {**INPUT, "num_inference_steps": 150}


@pytest.fixture(scope="module")
def cog(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cog")
    settings = Settings(data_dir=tmp / "data", models_dir=tmp / "models", heartbeat_s=0.1, lease_s=2,
                        poll_interval_s=0.05, max_batch_wait_ms=0, webhook_allow_private=True)
    with LiveServer(build_app(settings, backend=lambda s, r: FakeBackend(step_s=0.01))) as live:
        with httpx.Client(base_url=f"{live.url}/cog", timeout=30) as client:
            yield client


def job_count(cog: httpx.Client) -> int:
    return len(httpx.get(f"{cog.base_url.scheme}://{cog.base_url.netloc.decode()}/v1/jobs?limit=200").json()["data"])


def data_uri_image(uri: str):
    header, _, payload = uri.partition(",")
    assert header == "data:image/png;base64"
    return decode(base64.b64decode(payload))


def test_sync_prediction_answers_the_finished_prediction_with_data_uris(cog):
    response = cog.post("/predictions", json={"input": INPUT})
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "succeeded" and body["metrics"]["predict_time"] > 0
    assert data_uri_image(body["output"][0]).size == (64, 64)


def test_respond_async_is_202_and_the_webhook_gets_the_result(cog):
    receiver = Receiver()
    try:
        response = cog.post("/predictions", headers={"Prefer": "respond-async"},
                            json={"id": "hooked-1", "input": INPUT, "webhook": f"{receiver.url}/cog",
                                  "webhook_events_filter": ["completed"]})
        assert response.status_code == 202 and response.json()["status"] in ("starting", "processing")
        deadline = time.monotonic() + 10
        while not receiver.requests and time.monotonic() < deadline:
            time.sleep(0.05)
        delivered = json.loads(receiver.requests[0]["body"])
        assert delivered["status"] == "succeeded" and delivered["id"] == response.json()["id"] == "hooked-1"
    finally:
        receiver.close()


def test_put_is_idempotent_by_id(cog):
    before = job_count(cog)
    first = cog.put("/predictions/wjx3whax6rf4vphkegkhcvpv6a", json={"input": INPUT})
    again = cog.put("/predictions/wjx3whax6rf4vphkegkhcvpv6a", json={"input": INPUT})
    assert first.status_code == again.status_code == 200
    assert first.json()["id"] == "wjx3whax6rf4vphkegkhcvpv6a"
    assert first.json()["output"] == again.json()["output"]
    assert job_count(cog) == before + 1
    other = cog.put("/predictions/wjx3whax6rf4vphkegkhcvpv6a", json={"input": {**INPUT, "prompt": "else"}})
    assert other.status_code == 422 and other.json()["detail"][0]["loc"] == ["body", "id"]


def test_cancel_by_the_clients_id(cog):
    started = cog.put("/predictions/cancel-me-1", headers={"Prefer": "respond-async"}, json={"input": SLOW})
    assert started.status_code == 202
    canceled = cog.post("/predictions/cancel-me-1/cancel")
    assert canceled.status_code == 200 and canceled.json()["id"] == "cancel-me-1"
    missing = cog.post("/predictions/never-made/cancel")
    assert missing.status_code == 404 and missing.json()["detail"]


def test_invalid_input_is_fastapi_style_422(cog):
    response = cog.post("/predictions", json={"input": {**INPUT, "bogus": 1}})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "input", "bogus"]


def test_health_links_and_schema(cog):
    deadline = time.monotonic() + 10
    while (status := cog.get("/health-check").json()["status"]) == "BUSY" and time.monotonic() < deadline:
        time.sleep(0.05)  # a job of an earlier test may still be stopping
    assert status == "READY"
    links = cog.get("/").json()
    assert links["predictions_url"] == "/cog/predictions" and links["healthcheck_url"] == "/cog/health-check"
    schemas = cog.get("/openapi.json").json()["components"]["schemas"]
    assert "prompt" in schemas["Input"]["properties"] and schemas["Output"]["type"] == "array"

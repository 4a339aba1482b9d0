"""Issue 15 on the real engine: the official ``replicate`` client against ``pixelmill serve``
with the demo model (64 px, 2 steps), so Replicate's names reach diffusers for real."""

from __future__ import annotations

import httpx
import pytest
import replicate

from pixelmill.outbound.webhooks import standard_secret
from tests.conftest import WEBHOOK_SECRET
from tests.support.images import decode


def test_run_with_replicate_names_on_the_demo_model(server):
    client = replicate.Client(api_token="unused", base_url=f"{server.url}/replicate")
    prediction = client.models.predictions.create(
        model="stability-ai/sdxl", wait=True,
        input={"prompt": "a red fox", "width": 64, "height": 64, "num_inference_steps": 2, "seed": 3,
               "scheduler": "KarrasDPM", "guidance_scale": 5})
    prediction.wait()
    assert prediction.status == "succeeded" and len(prediction.output) == 1
    assert prediction.metrics["predict_time"] > 0 and prediction.progress.percentage == 1.0
    assert prediction.model == "pixelmill/demo"
    assert decode(httpx.get(prediction.output[0]).content).size == (64, 64)
    assert client.webhooks.default.secret().key == standard_secret(WEBHOOK_SECRET)
    job = httpx.get(f"{server.url}/v1/jobs/{prediction.id}").json()  # the same job, in the ledger
    assert job["status"] == "succeeded"
    assert job["gpu_seconds"] == pytest.approx(prediction.metrics["predict_time"], abs=1e-5)


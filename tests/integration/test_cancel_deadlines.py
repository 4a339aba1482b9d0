"""A Cancel-After deadline outlives the process that accepted it (issue 15's leftover:
it used to be a timer that a restart forgot)."""

from __future__ import annotations

import time

import httpx

from pixelmill.server import build_app
from pixelmill.settings import Settings
from tests.support.live import LiveServer

BODY = {"version": "stability-ai/sdxl", "input": {"prompt": "late", "width": 64, "height": 64,
                                                  "num_inference_steps": 2}}


def test_a_deadline_set_before_a_restart_cancels_the_job_after_it(tmp_path):
    # API-only hosts: no worker claims the job, so only the deadline can end it.
    settings = Settings(data_dir=tmp_path / "data", models_dir=tmp_path / "models", workers=0, lease_s=2, heartbeat_s=0.5)
    with LiveServer(build_app(settings)) as first:
        created = httpx.post(f"{first.url}/replicate/v1/predictions", json=BODY,
                             headers={"Prefer": "respond-async", "Cancel-After": "1500ms"}, timeout=30)
        assert created.status_code == 201, created.text
        job_id = created.json()["id"]
    # The first process stopped before the deadline; its timer went with it.
    with LiveServer(build_app(settings)) as second:
        url = f"{second.url}/v1/jobs/{job_id}"
        assert httpx.get(url, timeout=10).json()["status"] == "queued"
        deadline = time.monotonic() + 15
        while (status := httpx.get(url, timeout=10).json()["status"]) == "queued" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert status == "canceled"


def test_the_accepting_process_cancels_on_time_without_waiting_for_maintenance(tmp_path):
    # A long lease: maintenance would look only every 15 s; the process's own timer is exact.
    settings = Settings(data_dir=tmp_path / "data", models_dir=tmp_path / "models", workers=0, lease_s=60)
    with LiveServer(build_app(settings)) as server:
        began = time.monotonic()
        created = httpx.post(f"{server.url}/replicate/v1/predictions", json=BODY,
                             headers={"Prefer": "respond-async", "Cancel-After": "300ms"}, timeout=30)
        url = f"{server.url}/v1/jobs/{created.json()['id']}"
        while httpx.get(url, timeout=10).json()["status"] == "queued" and time.monotonic() - began < 10:
            time.sleep(0.05)
        assert httpx.get(url, timeout=10).json()["status"] == "canceled"
        assert time.monotonic() - began < 5

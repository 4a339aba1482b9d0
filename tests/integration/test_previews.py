"""Live previews on the real demo engine: from the step callback to the SSE stream.

One app for the module (``build_app`` with the diffusers engine on the tiny demo model,
on a loopback socket), previews every step. A job of many small steps is followed on
``/v1/jobs/{id}/events`` until its first ``preview`` event, read once more through a
second job store on the same database (as a separate API process would), then canceled:
the test does not wait for 150 steps. The last test runs the engine with previews off.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json

import httpx
import pytest
from PIL import Image

from pixelmill.core.types import GenerationRequest, Progress
from pixelmill.engine import preview as preview_module
from pixelmill.engine.runner import EngineRunner
from pixelmill.jobs.store import JobStore
from pixelmill.registry.models_dir import ModelRegistry
from pixelmill.server import build_app
from pixelmill.settings import Settings
from tests.support.live import LiveServer


@pytest.fixture(scope="module")
def settings(demo_models, tmp_path_factory) -> Settings:
    return Settings(models_dir=demo_models, model="demo", data_dir=tmp_path_factory.mktemp("previews"),
                    preview_steps=1, progress_interval_s=0.05)


@pytest.fixture(scope="module")
def server(settings):
    with LiveServer(build_app(settings), startup_timeout=120) as live:
        yield live


def sse_events(response: httpx.Response):
    """(event, data) pairs of an SSE response, as they arrive."""
    name = None
    for line in response.iter_lines():
        if line.startswith("event:"):
            name = line.split(":", 1)[1].strip()
        elif line.startswith("data:"):
            yield name, json.loads(line.split(":", 1)[1])


def test_a_preview_arrives_in_the_event_stream_while_the_job_runs(server, settings):
    body = {"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 150, "seed": 3}
    job = httpx.post(f"{server.url}/v1/jobs", json=body, timeout=60).json()
    seen, stored = [], None
    with httpx.stream("GET", f"{server.url}/v1/jobs/{job['id']}/events", timeout=120) as response:
        for event, data in sse_events(response):
            seen.append(event)
            if event == "preview" and stored is None:
                first = data
                other = JobStore.open(settings.db_url)  # another process's view of the store
                try:
                    stored = other.latest_preview(job["id"])
                finally:
                    other.engine.dispose()
                httpx.post(f"{server.url}/v1/jobs/{job['id']}/cancel", timeout=30)
    assert "preview" in seen and seen[-1] == "canceled", seen
    assert seen.index("started") < seen.index("preview")
    assert 1 <= first["step"] < 150 and first["total"] == 150
    header, encoded = first["image"].split(",", 1)
    assert header == "data:image/jpeg;base64"
    image = Image.open(io.BytesIO(base64.b64decode(encoded)))
    assert image.format == "JPEG" and image.size == (8, 8)  # the latents' size: 64 px / 8
    assert stored is not None and stored.media_type == "image/jpeg" and stored.step >= first["step"]
    assert Image.open(io.BytesIO(stored.data)).size == (8, 8)


def test_previews_off_cost_nothing(settings, monkeypatch):
    built = []
    real_hook = preview_module.PreviewHook

    class Spy(real_hook):
        def __init__(self, *args, **kwargs):
            built.append(args)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(preview_module, "PreviewHook", Spy)
    off = settings.model_copy(update={"preview_steps": 0})
    runner = EngineRunner(off, ModelRegistry(off.models_dir))
    runner.start().result(timeout=120)
    reports: list[Progress] = []
    request = GenerationRequest(prompt="a lighthouse", width=64, height=64, steps=3, seed=3)
    try:
        asyncio.run(runner.generate(request, on_progress=reports.append))
        assert reports and not any(report.previews for report in reports)
        assert built == []  # no hook: the step callback never looked at the latents
        # The same runner with previews on builds one, so the spy would have seen it.
        runner._settings = runner.engine.settings = settings
        asyncio.run(runner.generate(request, on_progress=reports.append))
        assert len(built) == 1 and any(report.previews for report in reports)
    finally:
        runner.shutdown()

"""Issue 17, metrics: ``/metrics`` after a known workload, its protection, and JSON logs.

In-process (the app's lifespan runs its worker on a fake backend; a real loopback receiver
takes the webhooks): the point is what is counted, not the socket. Every figure asserted
is deterministic for this workload: three jobs run one after another (one succeeds with two
images and a delivered webhook, one fails with a refused webhook, one is canceled while
running), so three batches of one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pixelmill.core.errors import GenerationFailed
from pixelmill.observe.logs import JsonFormatter
from pixelmill.server import build_app
from pixelmill.settings import Settings
from tests.support.backends.base import FakeBackend
from tests.support.receiver import Receiver, Reply

BASE = "http://127.0.0.1:8000"
JOB = {"width": 64, "height": 64, "steps": 2}


class FailsOnRequest(FakeBackend):
    """The fake backend, failing any batch whose prompt starts with ``fail``."""

    async def generate_batch(self, requests, **kwargs):
        if requests[0].prompt.startswith("fail"):
            raise GenerationFailed("this test asked for a failure", code="test_failure")
        return await super().generate_batch(requests, **kwargs)


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """``{(sample name, labels): value}`` of a Prometheus text exposition."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(scraped: dict, name: str, **labels: str) -> float:
    return scraped[(name, frozenset(labels.items()))]


def make_settings(tmp_path, **extra) -> Settings:
    return Settings(data_dir=tmp_path / "data", models_dir=tmp_path / "models", heartbeat_s=0.1, lease_s=2,
                    progress_interval_s=0.05, poll_interval_s=0.05, max_batch_wait_ms=0,
                    webhook_allow_private=True, **extra)


async def _finished(client: httpx.AsyncClient, job_id: str, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while (job := (await client.get(f"/v1/jobs/{job_id}")).json())["status"] not in ("succeeded", "failed",
                                                                                       "canceled"):
        assert time.monotonic() < deadline, job
        await asyncio.sleep(0.02)
    return job


async def _webhook_settled(client: httpx.AsyncClient, job_id: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not ((await client.get(f"/v1/jobs/{job_id}")).json().get("webhook_state") or {}).get("completed"):
        assert time.monotonic() < deadline, "the completed webhook was never attempted"
        await asyncio.sleep(0.02)


@pytest.fixture(scope="module")
def workload(tmp_path_factory):
    """Run the workload once; the scraped text, the jobs, and the JSON log lines it wrote."""
    tmp_path = tmp_path_factory.mktemp("metrics")
    receiver = Receiver()
    receiver.script = [Reply(200), Reply(400)]
    app = build_app(make_settings(tmp_path), backend=lambda _s, _r: FailsOnRequest(step_s=0.05))
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(JsonFormatter().format(record))  # type: ignore[method-assign]
    logger = logging.getLogger("pixelmill")
    logger.addHandler(handler)

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with app.router.lifespan_context(app), httpx.AsyncClient(
                transport=transport, base_url=BASE) as client:
            hooked = {**JOB, "webhook": receiver.url}
            done = (await client.post("/v1/jobs", json={**hooked, "prompt": "ok", "n": 2})).json()
            assert (await _finished(client, done["id"]))["status"] == "succeeded"
            await _webhook_settled(client, done["id"])
            failed = (await client.post("/v1/jobs", json={**hooked, "prompt": "fail"})).json()
            assert (await _finished(client, failed["id"]))["status"] == "failed"
            await _webhook_settled(client, failed["id"])
            slow = (await client.post("/v1/jobs", json={**JOB, "prompt": "slow", "steps": 100})).json()
            while (await client.get(f"/v1/jobs/{slow['id']}")).json()["status"] != "running":
                await asyncio.sleep(0.02)
            assert (await client.post(f"/v1/jobs/{slow['id']}/cancel")).status_code == 200
            assert (await _finished(client, slow["id"]))["status"] == "canceled"
            await client.get("/no/such/route")
            response = await client.get("/metrics")
            assert response.status_code == 200, response.text
            assert response.headers["content-type"].startswith("text/plain; version=")
            return response.text, {"done": done["id"], "failed": failed["id"], "canceled": slow["id"]}

    try:
        text, ids = asyncio.run(scenario())
    finally:
        logger.removeHandler(handler)
        receiver.close()
    return text, ids, lines


def test_job_counters_and_histograms_after_the_workload(workload):
    scraped = samples(workload[0])
    for status in ("succeeded", "failed", "canceled"):
        assert value(scraped, "pixelmill_jobs_finished_total", status=status) == 1
        assert value(scraped, "pixelmill_job_run_seconds_count", status=status) == 1
        assert value(scraped, "pixelmill_jobs", status=status) == 1  # read from the store
    assert value(scraped, "pixelmill_jobs", status="queued") == 0
    assert value(scraped, "pixelmill_jobs", status="running") == 0
    assert not [key for key in scraped if key[0] == "pixelmill_queue_depth"]  # nothing queued: no series
    assert value(scraped, "pixelmill_images_generated_total") == 2  # the succeeded job's two images
    assert value(scraped, "pixelmill_gpu_seconds_total") == pytest.approx(0.01)  # the fake's ledger figure
    assert value(scraped, "pixelmill_batch_size_count") == 3
    assert value(scraped, "pixelmill_batch_size_sum") == 3
    assert value(scraped, "pixelmill_batch_size_bucket", le="1.0") == 3
    assert value(scraped, "pixelmill_job_queue_wait_seconds_count") == 3
    # The canceled job ran ~0.05 s per step until the worker learned of the cancel: > 0.
    assert value(scraped, "pixelmill_job_run_seconds_sum", status="canceled") > 0


def test_webhook_deliveries_by_outcome(workload):
    scraped = samples(workload[0])
    assert value(scraped, "pixelmill_webhook_deliveries_total", event="completed", outcome="delivered") == 1
    assert value(scraped, "pixelmill_webhook_deliveries_total", event="completed", outcome="failed") == 1
    assert ("pixelmill_webhook_deliveries_total",
            frozenset({"event": "completed", "outcome": "refused"}.items())) not in scraped


def test_http_requests_by_route_template_not_raw_path(workload):
    text, ids, _ = workload
    scraped = samples(text)
    posts = value(scraped, "pixelmill_http_requests_total", dialect="native", route="/v1/jobs", method="POST",
                  status="202")
    assert posts == 3
    assert value(scraped, "pixelmill_http_requests_total", dialect="native", route="/v1/jobs/{job_id}/cancel",
                 method="POST", status="200") == 1
    polls = value(scraped, "pixelmill_http_requests_total", dialect="native", route="/v1/jobs/{job_id}",
                  method="GET", status="200")
    assert polls >= 6
    assert value(scraped, "pixelmill_http_requests_total", dialect="none", route="<unmatched>", method="GET",
                 status="404") == 1
    assert all(job_id not in text for job_id in ids.values())  # no job id became a label
    assert value(scraped, "pixelmill_http_request_duration_seconds_count", dialect="native",
                 route="/v1/jobs") == 3


def test_engine_cache_series_are_always_present(workload):
    scraped = samples(workload[0])
    for cache in ("lora", "controlnet"):
        for result in ("hit", "miss"):
            assert ("pixelmill_engine_cache_lookups_total",
                    frozenset({"cache": cache, "result": result}.items())) in scraped


def test_worker_log_lines_carry_the_job_id_as_json(workload):
    _, ids, lines = workload
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    failed = [e for e in entries if "test_failure" in e["message"]]
    assert failed and failed[0]["job_id"] == ids["failed"], entries
    assert failed[0]["level"] == "warning" and failed[0]["logger"] == "pixelmill.jobs.worker"
    refused = [e for e in entries if "webhook failed" in e["message"]]
    assert refused and refused[0]["job_id"] == ids["failed"], entries


# ---- protection --------------------------------------------------------------------------------


def _get(app, path: str, key: str | None = None) -> httpx.Response:
    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
            return await client.get(path, headers={"Authorization": f"Bearer {key}"} if key else {})

    return asyncio.run(go())


def test_metrics_need_an_admin_key_unless_opened_by_the_setting(tmp_path):
    app = build_app(make_settings(tmp_path, workers=0))
    admin = app.state.auth.keys.create("ops", scope="admin")[1]
    generate = app.state.auth.keys.create("app", scope="generate")[1]
    assert _get(app, "/metrics").status_code == 401
    refused = _get(app, "/metrics", generate)
    assert refused.status_code == 403 and "admin scope" in refused.json()["error"]["message"]
    assert _get(app, "/metrics", admin).status_code == 200

    opened = build_app(make_settings(tmp_path / "open", workers=0, metrics_public=True))
    opened.state.auth.keys.create("ops", scope="admin")
    assert _get(opened, "/metrics").status_code == 200  # keys exist, yet no key is needed here
    assert _get(opened, "/v1/jobs").status_code == 401  # only /metrics was opened


def test_queue_depth_and_oldest_age_per_model_come_from_the_store(tmp_path):
    """An API-only host (no worker): the queue it reports is the store's."""
    app = build_app(make_settings(tmp_path, workers=0))

    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
            for _ in range(2):
                assert (await client.post("/v1/jobs", json={**JOB, "prompt": "x"})).status_code == 202
            await asyncio.sleep(0.05)
            return (await client.get("/metrics")).text

    scraped = samples(asyncio.run(go()))
    depth = {dict(labels)["model"]: v for (name, labels), v in scraped.items()
             if name == "pixelmill_queue_depth"}
    assert list(depth.values()) == [2], depth
    (model,) = depth
    assert 0.05 <= value(scraped, "pixelmill_queue_oldest_age_seconds", model=model) < 30
    assert value(scraped, "pixelmill_jobs", status="queued") == 2

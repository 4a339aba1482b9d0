"""The gateway against real upstream servers on loopback: another pixelmill (a fake backend)
served in-thread, spoken to over its Replicate dialect (/replicate/v1) and its OpenAI
dialect (/v1). Routing by model, overflow, shadow sampling, refusals, 429, cancel."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from pixelmill.api.app import create_app
from pixelmill.server import build_services
from pixelmill.settings import Settings
from tests.support.backends.base import FakeBackend
from tests.support.backends.load_failure import LoadFailure
from tests.support.backends.slow_cancel_aware import SlowCancelAware
from tests.support.live import LiveServer

FAST = dict(lease_s=3, heartbeat_s=0.2, poll_interval_s=0.05, progress_interval_s=0.05)
UPSTREAM_MODEL = "hosted-xl"  # a bare alias on the upstream: its default (fake) model


@contextlib.contextmanager
def upstream(tmp: Path, *, step_s: float = 0.01, key: tuple[str, str | None] | None = None):
    """Another pixelmill on loopback (in-thread), its fake backend taking ``step_s`` a step.
    ``key``: (name, rate) of an API key to create, so it demands credentials; the token is
    set as ``server.token``."""
    settings = Settings(data_dir=tmp / "upstream", model_aliases=[UPSTREAM_MODEL], preview_steps=0, **FAST)
    services = build_services(settings, backend=lambda _s, _r: SlowCancelAware(step_s=step_s))
    server = LiveServer(create_app(settings, services))
    server.token = None
    if key is not None:
        from pixelmill.auth.store import KeyStore
        _, server.token = KeyStore(services.store.engine).create(key[0], rate=key[1])
    server.db = settings.db_url.split(":///", 1)[1]
    with server:
        yield server


def created_upstream(server) -> int:
    """How many jobs the upstream was asked to create (each would be billed)."""
    with sqlite3.connect(server.db) as db:
        return db.execute("SELECT count(*) FROM jobs").fetchone()[0]


def backends_toml(tmp: Path, up, *, kind: str, routes: str = "", env: str | None = None,
                  extra: str = "", price: str = "price_per_image = 0.05") -> Path:
    url = f"{up.url}/replicate/v1" if kind == "replicate" else f"{up.url}/v1"
    model = f"pixelmill/{UPSTREAM_MODEL}" if kind == "replicate" else UPSTREAM_MODEL
    text = f"""
[[backend]]
name = "hosted"
kind = "{kind}"
url = "{url}"
allow_private = true
models = {{ "cloud-model" = "{model}", "shared-model" = "{model}" }}
{price}
checked = 2026-12-01
poll_interval_s = 0.05
max_retries = 3
timeout_s = 10
{f'api_key_env = "{env}"' if env else ''}
{extra}
{routes}
"""
    path = tmp / f"backends-{kind}.toml"
    path.write_text(text)
    return path


@contextlib.contextmanager
def gateway(tmp: Path, backends: Path, *, backend=None, workers: int = 1, name: str = "gateway", **overrides):
    settings = Settings(data_dir=tmp / name, backends=backends, preview_steps=0, workers=workers,
                        **(FAST | overrides))
    services = build_services(settings, backend=backend or (lambda _s, _r: FakeBackend()))
    with LiveServer(create_app(settings, services)) as server:
        server.services = services
        yield server


def submit(url: str, model: str | None, expect: int = 202, **fields) -> dict:
    body = {"prompt": "a gateway test", "width": 64, "height": 64, "steps": 4} | fields
    if model is not None:
        body["model"] = model
    response = httpx.post(f"{url}/v1/jobs", json=body, timeout=30)
    assert response.status_code == expect, response.text
    return response.json()


def wait(url: str, job_id: str, timeout: float = 20, statuses=("succeeded", "failed", "canceled")) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = httpx.get(f"{url}/v1/jobs/{job_id}", timeout=10).json()
        if job["status"] in statuses:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} is still {job['status']} after {timeout} s")


def wait_failed_to_load(server, timeout: float = 10) -> None:
    """Until the gateway's local worker says its model failed to load."""
    deadline = time.monotonic() + timeout
    while server.services.workers[0].unavailable is None:
        assert time.monotonic() < deadline, "the local worker never reported its failed load"
        time.sleep(0.05)


def row(server, job_id: str) -> dict:
    job = server.services.store.get(job_id)
    return {"route": job.route, "upstream_id": job.upstream_id, "upstream_cost": job.upstream_cost,
            "gpu_seconds": job.gpu_seconds, "shadow_of": job.shadow_of, "error": job.error}


@pytest.mark.parametrize("kind", ["replicate", "openai"])
def test_routing_by_model_local_and_upstream(tmp_path, kind):
    with upstream(tmp_path) as up:
        toml = backends_toml(tmp_path, up, kind=kind)
        with gateway(tmp_path, toml) as gw:
            hosted = submit(gw.url, "cloud-model")
            local = submit(gw.url, None)
            done = wait(gw.url, hosted["id"])
            assert done["status"] == "succeeded", done
            assert wait(gw.url, local["id"])["status"] == "succeeded"
            # The image is stored here (upstream URLs expire) and served by the gateway.
            image = httpx.get(done["results"][0]["url"], timeout=10)
            assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
            assert row(gw, hosted["id"])["route"] == "hosted"
            assert row(gw, hosted["id"])["upstream_cost"] == pytest.approx(0.05)
            assert row(gw, local["id"])["route"] == "local"
            assert row(gw, local["id"])["upstream_id"] is None
            listed = {job["id"] for job in httpx.get(f"{gw.url}/v1/jobs", timeout=10).json()["data"]}
            assert {hosted["id"], local["id"]} <= listed
        assert created_upstream(up) == 1  # only the hosted model went there, once


def test_upstream_only_model_passes_catalog_and_availability(tmp_path):
    """No local worker can run (its model failed to load): local models get 503, the
    upstream model is still served."""
    with upstream(tmp_path) as up:
        toml = backends_toml(tmp_path, up, kind="replicate")
        with gateway(tmp_path, toml, backend=lambda _s, _r: LoadFailure()) as gw:
            wait_failed_to_load(gw)
            submit(gw.url, None, expect=503)
            submit(gw.url, "no-such-model", expect=404)
            hosted = submit(gw.url, "cloud-model")
            assert wait(gw.url, hosted["id"])["status"] == "succeeded"


def test_overflow_when_the_local_queue_is_full_or_no_worker_is_alive(tmp_path):
    routes = """
[[route]]
model = "shared-model"
policy = "local-then-upstream"
backend = "hosted"
overflow_wait_s = 1
"""
    with upstream(tmp_path) as up:
        toml = backends_toml(tmp_path, up, kind="replicate", routes=routes)
        # Locally "shared-model" is the default model under an alias the gateway knows.
        slow = lambda _s, _r: SlowCancelAware(step_s=0.5)  # noqa: E731
        with gateway(tmp_path, toml, backend=slow, model_aliases=[]) as gw:
            # Until a local job finished the expected wait assumes 10 s a job: with one local
            # job ahead the next overflows (10 s > 1 s); with an empty queue it stays local.
            first = submit(gw.url, "shared-model")
            second = submit(gw.url, "shared-model")
            assert row(gw, first["id"])["route"] == "local"
            assert row(gw, second["id"])["route"] == "hosted"
            assert wait(gw.url, second["id"])["status"] == "succeeded"
            httpx.post(f"{gw.url}/v1/jobs/{first['id']}/cancel", timeout=10)
        with gateway(tmp_path, toml, backend=lambda _s, _r: LoadFailure(), name="dead", model_aliases=[]) as gw:
            wait_failed_to_load(gw)
            spilled = submit(gw.url, "shared-model")  # no 503: the upstream takes it
            assert row(gw, spilled["id"])["route"] == "hosted"
            assert wait(gw.url, spilled["id"])["status"] == "succeeded"
        assert created_upstream(up) == 2


def test_shadow_sample_runs_on_both_and_keeps_the_local_result(tmp_path):
    routes = """
[[route]]
model = "shared-model"
policy = "shadow"
backend = "hosted"
sample = 0.5
"""
    from pixelmill.gateway.routing import sampled

    with upstream(tmp_path) as up:
        toml = backends_toml(tmp_path, up, kind="replicate", routes=routes)
        with gateway(tmp_path, toml, model_aliases=[]) as gw:
            jobs: list[dict] = []
            # Ids are random: submit until the sample has both kinds (6 or more jobs; 16 at most).
            while len(jobs) < 6 or len({sampled(job["id"], 0.5) for job in jobs}) < 2:
                assert len(jobs) < 16, "sha256 sampling never split 16 ids"
                jobs.append(submit(gw.url, "shared-model", seed=len(jobs)))
            for job in jobs:
                assert wait(gw.url, job["id"])["status"] == "succeeded"
                assert row(gw, job["id"])["route"] == "local"
            expected = [job["id"] for job in jobs if sampled(job["id"], 0.5)]
            deadline = time.monotonic() + 20
            while True:
                shadows = [j for j in gw.services.store.ledger() if j.shadow_of]
                if len(shadows) == len(expected) or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert sorted(j.shadow_of for j in shadows) == sorted(expected)
            assert all(j.route == "hosted" and j.upstream_cost == pytest.approx(0.05) for j in shadows)
            # Both costs and timings are in the report: shadow spend apart, its runs per model.
            from pixelmill.cost.report import store_report

            costs = store_report(gw.services.store, gw.services.settings).gateway
            assert costs.total.shadow == pytest.approx(0.05 * len(expected))
            assert costs.total.by_backend.keys() == {"local"}  # no client job went upstream
            shadow_row = next(m for m in costs.models if m.model == "shared-model")
            assert shadow_row.shadow_runs == len(expected) and shadow_row.latency_upstream_s > 0
            # Shadows are not the client's jobs: listings leave them out.
            listed = httpx.get(f"{gw.url}/v1/jobs", params={"limit": 100}, timeout=10).json()["data"]
            assert sorted(job["id"] for job in listed) == sorted(job["id"] for job in jobs)
        assert created_upstream(up) == len(expected)


@pytest.mark.parametrize("kind", ["replicate", "openai"])
def test_bad_credentials_fail_the_job_with_the_upstreams_message(tmp_path, kind, monkeypatch):
    monkeypatch.setenv("GATEWAY_TEST_KEY", "sk-wrong-secret-value")
    with upstream(tmp_path, key=("tenant", None)) as up:
        toml = backends_toml(tmp_path, up, kind=kind, env="GATEWAY_TEST_KEY")
        with gateway(tmp_path, toml) as gw:
            job = submit(gw.url, "cloud-model")
            done = wait(gw.url, job["id"])
            assert done["status"] == "failed"
            assert done["error"]["code"] == "upstream_auth"
            assert "invalid or revoked API key" in done["error"]["message"]
            assert "hosted" in done["error"]["message"]
            raw = httpx.get(f"{gw.url}/v1/jobs/{job['id']}", timeout=10).text
            openapi = httpx.get(f"{gw.url}/openapi.json", timeout=10).text
            assert "sk-wrong-secret-value" not in raw + openapi
        assert created_upstream(up) == 0


def test_upstream_429_is_retried_after_retry_after(tmp_path, monkeypatch, caplog):
    caplog.set_level("WARNING", logger="pixelmill.gateway.clients")
    with upstream(tmp_path, key=("tenant", "1/s")) as up:
        monkeypatch.setenv("GATEWAY_TEST_KEY", up.token)
        toml = backends_toml(tmp_path, up, kind="replicate", env="GATEWAY_TEST_KEY")
        with gateway(tmp_path, toml) as gw:
            started = time.monotonic()
            jobs = [submit(gw.url, "cloud-model", seed=i) for i in range(2)]
            for job in jobs:
                assert wait(gw.url, job["id"])["status"] == "succeeded"
            # The second create got 429 with Retry-After: 1 and waited that long before trying again.
            retries = [r.getMessage() for r in caplog.records if "HTTP 429" in r.getMessage()]
            assert retries and all("retrying in 1.0 s" in message for message in retries), retries
            assert time.monotonic() - started >= 0.9
            assert up.token not in caplog.text
        assert created_upstream(up) == 2  # a refused create bills nothing; no duplicate


def test_cancel_is_forwarded_upstream(tmp_path):
    with upstream(tmp_path, step_s=0.2) as up:
        toml = backends_toml(tmp_path, up, kind="replicate")
        with gateway(tmp_path, toml) as gw:
            job = submit(gw.url, "cloud-model", steps=100)
            deadline = time.monotonic() + 10
            while row(gw, job["id"])["upstream_id"] is None:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            # The upstream's own progress (its prediction logs) shows on the gateway's job.
            while (progress := wait(gw.url, job["id"], statuses=("running",)).get("progress") or {}).get("step", 0) < 2:
                assert time.monotonic() < deadline, progress
                time.sleep(0.05)
            assert progress["total"] == 100
            httpx.post(f"{gw.url}/v1/jobs/{job['id']}/cancel", timeout=10)
            assert wait(gw.url, job["id"])["status"] == "canceled"
            upstream_id = row(gw, job["id"])["upstream_id"]
            theirs = httpx.get(f"{up.url}/v1/jobs/{upstream_id}", timeout=10).json()
            deadline = time.monotonic() + 10
            while theirs["status"] != "canceled":
                assert time.monotonic() < deadline, theirs
                time.sleep(0.05)
                theirs = httpx.get(f"{up.url}/v1/jobs/{upstream_id}", timeout=10).json()


def test_webhook_of_an_upstream_job(tmp_path):
    from tests.support.receiver import Receiver

    receiver = Receiver()
    with upstream(tmp_path) as up:
        toml = backends_toml(tmp_path, up, kind="openai")
        with gateway(tmp_path, toml, webhook_allow_private=True) as gw:
            job = submit(gw.url, "cloud-model", webhook=f"{receiver.url}/hook")
            assert wait(gw.url, job["id"])["status"] == "succeeded"
            deadline = time.monotonic() + 10
            while not receiver.requests:
                assert time.monotonic() < deadline, "no webhook came"
                time.sleep(0.05)
    body = json.loads(receiver.requests[0]["body"])
    assert job["id"] in json.dumps(body) and "succeeded" in json.dumps(body)

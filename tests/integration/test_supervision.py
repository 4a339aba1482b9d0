"""A server says at once when it cannot run jobs, and its worker comes back by itself.

Real ``pixelmill serve`` processes. The tests run as root, which chmod cannot stop, so
storage is broken by putting a plain file where the results folder goes (every write
into it then fails with ``FileExistsError``/``NotADirectoryError``) and mended by
removing that file.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from pixelmill.server import build_app
from pixelmill.settings import Settings
from tests.support.backends.load_failure import LoadFailure
from tests.support.images import decode
from tests.support.server import ServerProcess, free_port, subprocess_env

FAST = ("--lease-s", "6", "--heartbeat-s", "1", "--poll-interval-s", "0.1")
JOB = {"prompt": "supervised", "width": 128, "height": 128, "steps": 4}


def health_is(url: str, status: str, *, timeout: float, process: ServerProcess | None = None) -> dict:
    """``/health``'s body once its status is ``status``."""
    deadline, body = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        if process is not None and process.process.poll() is not None:
            raise RuntimeError(f"server exited:\n{process.log()}")
        try:
            body = httpx.get(f"{url}/health", timeout=2).json()
            if body["status"] == status:
                return body
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"/health never said {status!r}; last: {body}")


def refused_at_once(url: str, path: str, body: dict) -> dict:
    """POST ``body``; asserts a 503 answered well under a second, returns the error."""
    started = time.monotonic()
    response = httpx.post(f"{url}{path}", json=body, timeout=30)
    elapsed = time.monotonic() - started
    assert response.status_code == 503, response.text
    assert elapsed < 1.0, f"{path} took {elapsed:.2f} s to refuse"
    return response.json()["error"]


def test_a_model_named_explicitly_that_fails_to_load_stops_serve_with_the_reason(tmp_path: Path):
    """``--model`` is a promise: a server that cannot keep it exits 1, it does not idle on 503s."""
    models = tmp_path / "models"
    (models / "checkpoints").mkdir(parents=True)
    (models / "checkpoints" / "broken.safetensors").write_bytes(b"\x00not a checkpoint" * 64)
    port = free_port()
    started = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "pixelmill.cli", "serve", "--port", str(port), "--data-dir", str(tmp_path / "data"),
         "--models-dir", str(models), "--model", "broken", *FAST],
        capture_output=True, text=True, timeout=150, env=subprocess_env(), cwd=tmp_path)
    elapsed = time.monotonic() - started
    output = run.stdout + run.stderr
    assert run.returncode == 1, output
    assert elapsed < 120, f"serve took {elapsed:.0f} s to give up on a broken model"
    last = output.strip().splitlines()[-1]
    # One line: which model, why (the loader's words), and what to do.
    assert last.startswith("error: --model / PIXELMILL_MODEL 'broken' could not be loaded (")
    assert "tokenizer" in last and "without --model" in last, last
    assert "Traceback" not in output and "cannot schedule new futures" not in output


def test_a_failed_model_makes_generation_routes_503_at_once(tmp_path: Path):
    """Where a server stays up without a model (the default model and the demo both failed;
    ``serve --model`` exits instead), every generation route refuses at once: nothing queued."""
    settings = Settings(data_dir=tmp_path / "data", models_dir=tmp_path / "models", lease_s=6, heartbeat_s=1,
                        poll_interval_s=0.1)
    app = build_app(settings, backend=lambda _settings, _registry: LoadFailure("checkpoint 'broken' is not valid"))

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=app)
        async with app.router.lifespan_context(app), httpx.AsyncClient(
                transport=transport, base_url="http://127.0.0.1:8000") as client:
            deadline = time.monotonic() + 10
            while (await client.get("/health")).json()["status"] != "failed":
                assert time.monotonic() < deadline, "the worker never reported the failed model"
                await asyncio.sleep(0.02)
            for path, body in [("/v1/images/generations", {"prompt": "x", "size": "256x256"}),
                               ("/v1/generate", {"prompt": "x"}), ("/v1/jobs", {"prompt": "x"})]:
                began = time.monotonic()
                response = await client.post(path, json=body)
                assert response.status_code == 503 and time.monotonic() - began < 1.0, (path, response.text)
                error = response.json()["error"]
                assert error["code"] == "model_unavailable", (path, error)
                assert "the model failed to load" in error["message"] and "broken" in error["message"], error
            assert (await client.get("/v1/jobs")).json()["data"] == []  # nothing was queued
            health = (await client.get("/health")).json()
            assert "the model failed to load" in health["error"] and "broken" in health["error"]

    asyncio.run(scenario())


def test_unwritable_results_degrade_the_server_which_recovers_once_writable(demo_models: Path, tmp_path: Path):
    server = ServerProcess(tmp_path, "--models-dir", str(demo_models), "--model", "demo", *FAST).start()
    results = tmp_path / "data" / "results"  # next to the SQLite database in the data dir
    try:
        if results.exists():
            for leftover in results.iterdir():
                leftover.unlink()
            results.rmdir()
        results.write_text("a file where the results folder should be")

        accepted = httpx.post(f"{server.url}/v1/jobs", json=JOB, timeout=30)
        assert accepted.status_code == 202, accepted.text  # the worker was fine when it came in
        job_id = accepted.json()["id"]

        health = health_is(server.url, "degraded", timeout=60)
        assert "storing results failed" in health["error"], health
        assert str(tmp_path) not in health["error"]  # no paths on a public endpoint
        assert httpx.get(f"{server.url}/health").status_code == 503
        error = refused_at_once(server.url, "/v1/images/generations", {"prompt": "x", "size": "256x256"})
        assert error["code"] == "worker_unavailable" and "storing results failed" in error["message"]
        refused_at_once(server.url, "/v1/jobs", JOB)

        job = httpx.get(f"{server.url}/v1/jobs/{job_id}").json()
        assert (job["status"], job["attempt"]) == ("queued", 1)  # back in the queue, the attempt counted
        assert "storing results failed" in job["waiting_reason"]

        results.unlink()  # writable again: nobody restarts anything
        health_is(server.url, "ready", timeout=30)
        deadline = time.monotonic() + 60
        while (job := httpx.get(f"{server.url}/v1/jobs/{job_id}").json())["status"] != "succeeded":
            assert job["status"] in ("queued", "running") and time.monotonic() < deadline, job
            time.sleep(0.1)
        assert job["attempt"] == 2 and job.get("waiting_reason") is None
        assert decode(httpx.get(job["results"][0]["url"]).content).size == (128, 128)
        assert httpx.post(f"{server.url}/v1/jobs", json=JOB, timeout=30).status_code == 202
    finally:
        server.stop()
    assert "fault" in server.log()  # the worker said what happened


def test_a_worker_whose_model_fails_to_load_exits_non_zero(tmp_path: Path):
    """A process supervisor must see the failure, not a healthy idle worker."""
    models = tmp_path / "models"
    (models / "checkpoints").mkdir(parents=True)
    (models / "checkpoints" / "broken.safetensors").write_bytes(b"\x00not a checkpoint" * 64)
    run = subprocess.run(
        [sys.executable, "-m", "pixelmill.cli", "worker", "--models-dir", str(models), "--model", "broken",
         "--data-dir", str(tmp_path / "data")],
        capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 1, run.stdout + run.stderr
    assert "cannot run" in run.stderr and "broken" in run.stderr

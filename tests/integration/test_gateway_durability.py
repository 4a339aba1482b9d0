"""Gateway durability with real processes killed on purpose: the upstream dies mid-job (the
job fails clearly, nothing is created twice), the gateway dies mid-job (a restarted one
resumes polling the same upstream prediction id; an OpenAI-style call is not resent)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.test_gateway_routing import (
    UPSTREAM_MODEL, backends_toml, created_upstream, gateway, submit, wait,
)
from tests.support.server import ServerProcess, free_port, subprocess_env, wait_healthy

ROOT = Path(__file__).resolve().parents[2]
UPSTREAM = f"""
import sys, uvicorn
from pathlib import Path
from pixelmill.api.app import create_app
from pixelmill.server import build_services
from pixelmill.settings import Settings
from tests.support.backends.slow_cancel_aware import SlowCancelAware
settings = Settings(data_dir=Path(sys.argv[1]), model_aliases=["{UPSTREAM_MODEL}"], preview_steps=0,
                    poll_interval_s=0.05, heartbeat_s=0.2, progress_interval_s=0.05, lease_s=3)
services = build_services(settings, backend=lambda _s, _r: SlowCancelAware(step_s=float(sys.argv[3])))
uvicorn.run(create_app(settings, services), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
"""
GATEWAY_FLAGS = ("--workers", "0", "--lease-s", "2", "--heartbeat-s", "0.2", "--poll-interval-s", "0.05")


@contextlib.contextmanager
def upstream_process(tmp: Path, step_s: float):
    """A pixelmill on a fake backend in its own process (so it can be killed)."""
    port = free_port()
    data = tmp / "upstream-proc"
    log = open(tmp / "upstream.log", "wb")
    process = subprocess.Popen([sys.executable, "-c", UPSTREAM, str(data), str(port), str(step_s)],
                               cwd=ROOT, env=subprocess_env(), stdout=log, stderr=subprocess.STDOUT)
    server = type("Upstream", (), {})()
    server.url, server.process, server.db = f"http://127.0.0.1:{port}", process, str(data / "pixelmill.db")
    try:
        wait_healthy(server.url, process, 60, lambda: (tmp / "upstream.log").read_text(errors="replace"))
        yield server
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()


def wait_upstream_id(url: str, db: Path, job_id: str, timeout: float = 15) -> str:
    import sqlite3

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with sqlite3.connect(db) as conn:
            found = conn.execute("SELECT upstream_id FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if found and found[0]:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never got an upstream id")


def wait_created(up, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while created_upstream(up) < 1:
        assert time.monotonic() < deadline, "the upstream never received the job"
        time.sleep(0.05)


def test_upstream_killed_mid_job_fails_clearly_and_never_duplicates(tmp_path):
    with upstream_process(tmp_path, step_s=0.2) as up:
        toml = backends_toml(tmp_path, up, kind="replicate")
        with gateway(tmp_path, toml) as gw:
            job = submit(gw.url, "cloud-model", steps=100)
            wait_upstream_id(gw.url, Path(gw.services.settings.db_url.split(":///", 1)[1]), job["id"])
            up.process.kill()
            up.process.wait()
            started = time.monotonic()
            done = wait(gw.url, job["id"], timeout=20)
            assert done["status"] == "failed"
            assert done["error"]["code"] == "upstream_unreachable"
            assert "hosted" in done["error"]["message"]
            assert time.monotonic() - started < 15  # retries with backoff, then a clear failure
        assert created_upstream(up) == 1


@pytest.mark.parametrize("kind", ["replicate", "openai"])
def test_gateway_killed_mid_job_resumes_the_same_upstream_id(tmp_path, kind):
    with upstream_process(tmp_path, step_s=0.05) as up:
        toml = backends_toml(tmp_path, up, kind=kind)
        db = tmp_path / "gw" / "data" / "pixelmill.db"
        first = ServerProcess(tmp_path / "gw", "--backends", str(toml), *GATEWAY_FLAGS)
        (tmp_path / "gw").mkdir()
        first.start(timeout=60)
        try:
            job = submit(first.url, "cloud-model", steps=60)  # about 3 s upstream
            upstream_id = wait_upstream_id(first.url, db, job["id"])
            # The OpenAI kind commits its marker *before* sending: wait until the request is
            # in the upstream's hands, so the kill lands mid-call (not between marker and send).
            wait_created(up)
            first.kill()  # SIGKILL mid-job: the lease runs out, nothing was released
        finally:
            first.stop()
        with gateway(tmp_path, toml, name="gw/data", workers=0, lease_s=2) as gw:
            done = wait(gw.url, job["id"], timeout=30)
            record = gw.services.store.get(job["id"])
        assert record.upstream_id == upstream_id
        if kind == "replicate":
            assert done["status"] == "succeeded", done
            assert record.attempt == 2  # the second attempt resumed polling the first's prediction
        else:
            # A synchronous call has nothing to resume; it is not sent twice.
            assert done["status"] == "failed" and done["error"]["code"] == "upstream_interrupted"
        assert created_upstream(up) == 1
